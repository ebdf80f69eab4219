namespace Modular.Abstractions.Plugins;

/// <summary>
/// Whether a plugin can do its work on this host, and if not, why. Shown by <c>modular plugins</c>
/// and used by the engine before it selects a plugin.
/// </summary>
/// <param name="IsUsable">True when the plugin can be used here.</param>
/// <param name="Reason">Why it cannot be used (null when usable), phrased for an operator.</param>
public sealed record PluginAvailability(bool IsUsable, string? Reason)
{
    /// <summary>The plugin is usable on this host.</summary>
    public static PluginAvailability Usable { get; } = new(true, null);

    /// <summary>The plugin is not usable here, for the given reason.</summary>
    /// <param name="reason">What is missing and, where known, what to do about it.</param>
    public static PluginAvailability NotUsable(string reason) => new(false, reason);
}

/// <summary>Implemented by every plugin factory: tells whether it can work on this host.</summary>
public interface IProbePlugin
{
    /// <summary>Checks this host (devices, kernel features, permissions) without side effects.</summary>
    PluginAvailability Probe();
}

/// <summary>
/// The version of the plugin contract. A plugin loads when it was built against the same
/// <see cref="Major"/> and a <see cref="Minor"/> no newer than the host's.
/// </summary>
public static class ContractVersion
{
    /// <summary>Changes on breaking changes to the contract.</summary>
    public const int Major = 1;

    /// <summary>Changes on additions to the contract.</summary>
    public const int Minor = 0;

    /// <summary>True when a plugin built against <paramref name="pluginBuiltAgainst"/> can be loaded by this contract version.</summary>
    /// <param name="pluginBuiltAgainst">The Modular.Abstractions assembly version the plugin references.</param>
    public static bool IsCompatible(Version pluginBuiltAgainst)
    {
        ArgumentNullException.ThrowIfNull(pluginBuiltAgainst);
        return pluginBuiltAgainst.Major == Major && pluginBuiltAgainst.Minor <= Minor;
    }
}
