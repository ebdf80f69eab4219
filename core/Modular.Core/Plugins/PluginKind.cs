namespace Modular.Core.Plugins;

/// <summary>What a plugin part provides.</summary>
public enum PluginKind
{
    /// <summary>Not a valid kind.</summary>
    Invalid = 0,

    /// <summary>A migration transport, selected by URI scheme.</summary>
    Transport = 1,

    /// <summary>A device model, selected by device type.</summary>
    Device = 2,

    /// <summary>A postcopy fault backend, selected by name.</summary>
    FaultBackend = 3,
}

/// <summary>One part a plugin exports, as <c>modular plugins</c> lists it.</summary>
/// <param name="Plugin">The plugin folder name (e.g. <c>transport-tcp</c>).</param>
/// <param name="Kind">What the part provides.</param>
/// <param name="Name">The scheme, device type or backend name it is selected by.</param>
/// <param name="Version">The plugin assembly's version.</param>
/// <param name="AssemblyPath">The assembly file.</param>
/// <param name="IsUsable">Whether it can be used on this host.</param>
/// <param name="Reason">Why not, when it cannot.</param>
public sealed record PluginPartInfo(
    string Plugin, PluginKind Kind, string Name, string Version, string AssemblyPath, bool IsUsable, string? Reason);

/// <summary>A problem found while loading plugins. Loading goes on; the problem is reported, not thrown.</summary>
/// <param name="Path">The folder or file concerned.</param>
/// <param name="Message">What is wrong and what to do.</param>
public sealed record PluginLoadProblem(string Path, string Message);
