using System.Composition.Hosting;
using System.Reflection;
using McMaster.NETCore.Plugins;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Modular.Abstractions.Devices;
using Modular.Abstractions.Faults;
using Modular.Abstractions.Plugins;
using Modular.Abstractions.Transports;

namespace Modular.Core.Plugins;

/// <summary>
/// The plugins found on disk: each <c>plugins/&lt;name&gt;/</c> folder is loaded into its own load
/// context (sharing the Modular.Abstractions types with the host), composed with System.Composition,
/// and its parts are selected by metadata (scheme, device type, backend name).
/// Problems never throw here: they are collected in <see cref="Problems"/>, and only a request for
/// the affected name fails. Instances are immutable after <see cref="Load"/>; safe from any thread.
/// </summary>
public sealed partial class PluginCatalog : IDisposable
{
    private static readonly Type[] SharedTypes =
    [
        typeof(IMigrationTransport),
        typeof(System.Composition.ExportAttribute),
        typeof(System.IO.Pipelines.IDuplexPipe),
    ];

    private readonly List<PluginLoader> _loaders = new();
    private readonly List<PluginLoadProblem> _problems = new();
    private readonly List<PluginPart<IMigrationTransport>> _transports = new();
    private readonly List<PluginPart<IDeviceModelFactory>> _devices = new();
    private readonly List<PluginPart<IFaultBackendFactory>> _faultBackends = new();
    private readonly ILogger _logger;

    private PluginCatalog(ILogger logger) => _logger = logger;

    /// <summary>The default plugin directory: <c>plugins/</c> beside the executable.</summary>
    public static string DefaultDirectory => Path.Combine(AppContext.BaseDirectory, "plugins");

    /// <summary>Everything that went wrong while loading, in the order found.</summary>
    public IReadOnlyList<PluginLoadProblem> Problems => _problems;

    /// <summary>
    /// Loads every plugin folder under each directory of <paramref name="directories"/>. A directory
    /// that itself holds a plugin assembly is loaded as one plugin folder.
    /// </summary>
    /// <param name="directories">Directories of plugin folders; missing ones are reported as problems.</param>
    /// <param name="logger">Receives a line per plugin loaded and per problem.</param>
    public static PluginCatalog Load(IEnumerable<string> directories, ILogger? logger = null)
    {
        ArgumentNullException.ThrowIfNull(directories);
        var catalog = new PluginCatalog(logger ?? NullLogger.Instance);
        foreach (string directory in directories.Select(Path.GetFullPath).Distinct(StringComparer.Ordinal))
        {
            catalog.LoadDirectory(directory);
        }

        catalog.ReportDuplicates();
        return catalog;
    }

    /// <summary>The transport for <paramref name="scheme"/>.</summary>
    /// <param name="scheme">A URI scheme such as <c>tcp</c>.</param>
    /// <exception cref="PluginException">No plugin or several plugins offer it, or it failed to start.</exception>
    public IMigrationTransport GetTransport(string scheme) => Select(_transports, PluginKind.Transport, scheme, "URI scheme");

    /// <summary>The device model factory for <paramref name="type"/>.</summary>
    /// <param name="type">A device type such as <c>serial</c>.</param>
    /// <exception cref="PluginException">No plugin or several plugins offer it, or it failed to start.</exception>
    public IDeviceModelFactory GetDeviceModel(string type) => Select(_devices, PluginKind.Device, type, "device type");

    /// <summary>The fault backend factory called <paramref name="name"/>.</summary>
    /// <param name="name">A backend name such as <c>userfaultfd</c>.</param>
    /// <exception cref="PluginException">No plugin or several plugins offer it, or it failed to start.</exception>
    public IFaultBackendFactory GetFaultBackend(string name) => Select(_faultBackends, PluginKind.FaultBackend, name, "fault backend");

    /// <summary>The names offered for one kind (schemes, device types, backend names), sorted.</summary>
    /// <param name="kind">The kind of part.</param>
    public IReadOnlyList<string> Names(PluginKind kind) => kind switch
    {
        PluginKind.Transport => SortedNames(_transports),
        PluginKind.Device => SortedNames(_devices),
        PluginKind.FaultBackend => SortedNames(_faultBackends),
        _ => [],
    };

    /// <summary>Every part with its availability on this host (this creates and probes each part).</summary>
    public IReadOnlyList<PluginPartInfo> Describe()
    {
        var rows = new List<PluginPartInfo>();
        rows.AddRange(_transports.Select(p => DescribePart(p, p => p.Probe())));
        rows.AddRange(_devices.Select(p => DescribePart(p, p => p.Probe())));
        rows.AddRange(_faultBackends.Select(p => DescribePart(p, p => p.Probe())));
        return rows.OrderBy(r => r.Kind).ThenBy(r => r.Name, StringComparer.Ordinal).ToList();
    }

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (PluginLoader loader in _loaders)
        {
            loader.Dispose();
        }

        _loaders.Clear();
    }

    private static IReadOnlyList<string> SortedNames<T>(List<PluginPart<T>> parts)
        where T : class =>
        parts.Select(p => p.Name).Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToList();

    private static PluginPartInfo DescribePart<T>(PluginPart<T> part, Func<T, PluginAvailability> probe)
        where T : class
    {
        PluginAvailability availability;
        try
        {
            availability = probe(part.GetInstance());
        }
        catch (PluginException ex)
        {
            availability = PluginAvailability.NotUsable(ex.InnerException?.Message ?? ex.Message);
        }
        catch (Exception ex)
        {
            availability = PluginAvailability.NotUsable("its probe failed: " + ex.Message);
        }

        return new PluginPartInfo(part.Plugin, part.Kind, part.Name, part.Version, part.AssemblyPath, availability.IsUsable, availability.Reason);
    }

    private T Select<T>(List<PluginPart<T>> parts, PluginKind kind, string name, string what)
        where T : class
    {
        var matches = parts.Where(p => string.Equals(p.Name, name, StringComparison.Ordinal)).ToList();
        if (matches.Count == 0)
        {
            IReadOnlyList<string> available = SortedNames(parts);
            string list = available.Count == 0 ? "none" : string.Join(", ", available);
            throw new PluginException(
                $"No plugin offers the {what} '{name}'. Available: {list}. " +
                $"Check the plugin folders ({string.Join(", ", _searched)}) or add one with --plugins DIR.");
        }

        if (matches.Count > 1)
        {
            throw new PluginException(DuplicateMessage(kind, name, matches.Select(m => (m.Plugin, m.AssemblyPath))));
        }

        return matches[0].GetInstance();
    }

    private static string DuplicateMessage(PluginKind kind, string name, IEnumerable<(string Plugin, string Path)> claimants) =>
        $"Several plugins claim the {PluginPart<object>.Describe(kind)} '{name}': " +
        string.Join(" and ", claimants.Select(c => $"'{c.Plugin}' ({c.Path})")) +
        ". Remove all but one of them.";

    private void ReportDuplicates()
    {
        void Check<T>(List<PluginPart<T>> parts)
            where T : class
        {
            foreach (IGrouping<string, PluginPart<T>> group in parts.GroupBy(p => p.Name, StringComparer.Ordinal).Where(g => g.Count() > 1))
            {
                PluginPart<T> first = group.First();
                AddProblem(first.AssemblyPath, DuplicateMessage(first.Kind, group.Key, group.Select(p => (p.Plugin, p.AssemblyPath))));
            }
        }

        Check(_transports);
        Check(_devices);
        Check(_faultBackends);
    }

    private void AddProblem(string path, string message)
    {
        _problems.Add(new PluginLoadProblem(path, message));
        _logger.LogDebug("Plugin problem: {Message}", message);
    }
}
