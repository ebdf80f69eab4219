namespace Modular.Core.Plugins;

/// <summary>
/// One exported part of a loaded plugin. The part's object is created on first use, so a plugin whose
/// constructor throws fails only when it is used, with an error naming it, and the others stay usable.
/// </summary>
/// <typeparam name="T">The contract (transport, device model factory, fault backend factory).</typeparam>
internal sealed class PluginPart<T>
    where T : class
{
    private readonly Lazy<T> _export;
    private readonly object _gate = new();
    private T? _instance;
    private Exception? _failure;

    internal PluginPart(string plugin, PluginKind kind, string name, string version, string assemblyPath, Lazy<T> export)
    {
        Plugin = plugin;
        Kind = kind;
        Name = name;
        Version = version;
        AssemblyPath = assemblyPath;
        _export = export;
    }

    internal string Plugin { get; }

    internal PluginKind Kind { get; }

    internal string Name { get; }

    internal string Version { get; }

    internal string AssemblyPath { get; }

    /// <summary>The part's object, created once. Throws <see cref="PluginException"/> naming the plugin if creation fails.</summary>
    internal T GetInstance()
    {
        lock (_gate)
        {
            if (_instance is not null)
            {
                return _instance;
            }

            if (_failure is null)
            {
                try
                {
                    _instance = _export.Value;
                    return _instance;
                }
                catch (Exception ex)
                {
                    _failure = ex is System.Composition.Hosting.CompositionFailedException && ex.InnerException is not null
                        ? ex.InnerException
                        : ex;
                }
            }

            Exception cause = Unwrap(_failure);
            throw new PluginException(
                $"Plugin '{Plugin}' ({AssemblyPath}) failed to create its {Describe(Kind)} '{Name}': {cause.Message} " +
                "Fix or remove that plugin; the other plugins stay usable.",
                cause);
        }
    }

    private static Exception Unwrap(Exception ex)
    {
        while (ex is System.Reflection.TargetInvocationException { InnerException: { } inner })
        {
            ex = inner;
        }

        return ex;
    }

    internal static string Describe(PluginKind kind) => kind switch
    {
        PluginKind.Transport => "transport",
        PluginKind.Device => "device model",
        PluginKind.FaultBackend => "fault backend",
        _ => "part",
    };
}
