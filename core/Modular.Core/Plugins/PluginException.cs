namespace Modular.Core.Plugins;

/// <summary>
/// A plugin asked for by name (a URI scheme, a device type, a fault backend) cannot be used: it is
/// not there, two plugins claim it, or it failed to start. The message names it and what is available.
/// </summary>
public sealed class PluginException : Exception
{
    /// <summary>Creates the exception.</summary>
    public PluginException() { }

    /// <summary>Creates the exception with a message.</summary>
    /// <param name="message">Names the plugin and what to do.</param>
    public PluginException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and cause.</summary>
    /// <param name="message">Names the plugin and what to do.</param>
    /// <param name="innerException">The cause.</param>
    public PluginException(string message, Exception innerException) : base(message, innerException) { }
}
