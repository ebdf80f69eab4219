namespace Modular.Abstractions.Plugins;

/// <summary>
/// Optional, for any plugin: first-use work done ahead of a migration, so that it is not done inside
/// one (starting the threads a connection will need, say). Modular calls <see cref="WarmUp"/> on a
/// source that may be migrated away (started with QMP), for every loaded transport, and on a
/// destination, for the transport it listens on, while it waits. It runs on a background thread,
/// possibly at the lowest priority; threads it starts should not inherit that (start them from the
/// thread pool).
/// </summary>
public interface IWarmUpPlugin
{
    /// <summary>
    /// Does the first-use work; returns soon (long work goes on in the background). May be called
    /// more than once. Must not throw for anything a later connection would report itself: a plugin
    /// that cannot warm up simply does not, and its connections pay the first-use cost.
    /// </summary>
    void WarmUp();
}
