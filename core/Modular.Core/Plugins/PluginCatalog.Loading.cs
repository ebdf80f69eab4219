using System.Composition.Hosting;
using System.Reflection;
using McMaster.NETCore.Plugins;
using Microsoft.Extensions.Logging;
using Modular.Abstractions.Devices;
using Modular.Abstractions.Faults;
using Modular.Abstractions.Plugins;
using Modular.Abstractions.Transports;

namespace Modular.Core.Plugins;

/// <summary>Finding plugin folders and loading their assemblies.</summary>
public sealed partial class PluginCatalog
{
    private readonly List<string> _searched = new();

    private void LoadDirectory(string directory)
    {
        _searched.Add(directory);
        if (!Directory.Exists(directory))
        {
            AddProblem(directory, $"Plugin directory '{directory}' does not exist. Build the solution (dotnet build) or pass an existing directory with --plugins.");
            return;
        }

        if (Directory.EnumerateFiles(directory, "*.dll").Any())
        {
            LoadFolder(directory);
        }

        foreach (string folder in Directory.EnumerateDirectories(directory).Order(StringComparer.Ordinal))
        {
            LoadFolder(folder);
        }
    }

    private void LoadFolder(string folder)
    {
        string plugin = Path.GetFileName(folder.TrimEnd(Path.DirectorySeparatorChar));
        string[] dlls = Directory.GetFiles(folder, "*.dll").Order(StringComparer.Ordinal).ToArray();
        if (dlls.Length == 0)
        {
            AddProblem(folder, $"Plugin folder '{folder}' holds no assembly (.dll). A plugin folder holds the plugin's build output; remove the folder or build the plugin into it.");
            return;
        }

        bool carriesContract = dlls.Any(d => Path.GetFileNameWithoutExtension(d) == PluginAssemblyInspector.ContractAssemblyName);
        var unreadable = new List<string>();
        var candidates = new List<(string Path, PluginAssemblyInspector.Inspection Inspection)>();
        foreach (string dll in dlls)
        {
            if (Path.GetFileNameWithoutExtension(dll) == PluginAssemblyInspector.ContractAssemblyName)
            {
                continue;
            }

            PluginAssemblyInspector.Inspection inspection = PluginAssemblyInspector.Inspect(dll);
            if (inspection.Error is not null)
            {
                unreadable.Add($"{Path.GetFileName(dll)}: {inspection.Error}");
            }
            else if (inspection.ContractVersion is not null)
            {
                candidates.Add((dll, inspection));
            }
        }

        if (candidates.Count == 0)
        {
            string detail = unreadable.Count > 0 ? " (" + string.Join("; ", unreadable) + ")" : string.Empty;
            AddProblem(folder, $"Plugin folder '{folder}' has no loadable plugin assembly: none of its .dll files is a .NET assembly built against {PluginAssemblyInspector.ContractAssemblyName}{detail}.");
            return;
        }

        foreach ((string path, PluginAssemblyInspector.Inspection inspection) in candidates)
        {
            Version contract = inspection.ContractVersion!;
            if (!ContractVersion.IsCompatible(contract))
            {
                AddProblem(path,
                    $"Plugin '{plugin}' ({path}) was built against {PluginAssemblyInspector.ContractAssemblyName} {contract.ToString(3)}, " +
                    $"but this host provides {ContractVersion.Major}.{ContractVersion.Minor}.0 (a plugin needs the same major version and a minor version no newer than the host's). " +
                    "Rebuild the plugin against this version of Modular.");
                continue;
            }

            LoadAssembly(plugin, path, inspection.Version?.ToString(3) ?? "?", carriesContract);
        }
    }

    private void LoadAssembly(string plugin, string path, string version, bool carriesContract)
    {
        int before = _transports.Count + _devices.Count + _faultBackends.Count;
        try
        {
            PluginLoader loader = PluginLoader.CreateFromAssemblyFile(path, SharedTypes, config => config.PreferSharedTypes = false);
            _loaders.Add(loader);
            Assembly assembly = loader.LoadDefaultAssembly();
            CompositionHost container = new ContainerConfiguration().WithAssembly(assembly).CreateContainer();

            foreach (Lazy<IMigrationTransport, IDictionary<string, object>> export in container.GetExports<Lazy<IMigrationTransport, IDictionary<string, object>>>())
            {
                _transports.Add(new PluginPart<IMigrationTransport>(plugin, PluginKind.Transport, MetadataName(export.Metadata, "Scheme"), version, path, export));
            }

            foreach (Lazy<IDeviceModelFactory, IDictionary<string, object>> export in container.GetExports<Lazy<IDeviceModelFactory, IDictionary<string, object>>>())
            {
                _devices.Add(new PluginPart<IDeviceModelFactory>(plugin, PluginKind.Device, MetadataName(export.Metadata, "Type"), version, path, export));
            }

            foreach (Lazy<IFaultBackendFactory, IDictionary<string, object>> export in container.GetExports<Lazy<IFaultBackendFactory, IDictionary<string, object>>>())
            {
                _faultBackends.Add(new PluginPart<IFaultBackendFactory>(plugin, PluginKind.FaultBackend, MetadataName(export.Metadata, "Name"), version, path, export));
            }
        }
        catch (Exception ex) when (ex is not OutOfMemoryException)
        {
            string cause = ex is ReflectionTypeLoadException rtle && rtle.LoaderExceptions.FirstOrDefault(e => e is not null) is { } first
                ? first.Message
                : ex.Message;
            AddProblem(path, $"Plugin '{plugin}' ({path}) could not be loaded: {cause}");
            return;
        }

        int found = _transports.Count + _devices.Count + _faultBackends.Count - before;
        if (found == 0)
        {
            string hint = carriesContract
                ? $"Its folder carries its own copy of {PluginAssemblyInspector.ContractAssemblyName}.dll, which makes MEF ignore its parts"
                : $"It may carry its own copy of {PluginAssemblyInspector.ContractAssemblyName}, which makes MEF ignore its parts";
            AddProblem(path,
                $"Plugin '{plugin}' ({path}) loaded but exports no transport, device model or fault backend. {hint}: " +
                "reference the contract with <Private>false</Private> and <ExcludeAssets>runtime</ExcludeAssets>, " +
                "and export parts with [TransportMetadata], [DeviceMetadata] or [FaultBackendMetadata].");
            return;
        }

        _logger.LogDebug("Loaded plugin {Plugin} from {Path} ({Count} parts)", plugin, path, found);
    }

    private static string MetadataName(IDictionary<string, object> metadata, string key) =>
        metadata.TryGetValue(key, out object? value) && value is string s ? s : "?";
}
