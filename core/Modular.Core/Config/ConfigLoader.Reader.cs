using System.Globalization;
using Microsoft.Extensions.Configuration;
using Modular.Abstractions.Devices;

namespace Modular.Core.Config;

/// <summary>Validation and typing of the configuration tree.</summary>
public static partial class ConfigLoader
{
    private sealed partial class Reader(IConfigurationRoot root, string baseDirectory, List<string> errors)
    {
        internal ModularConfig Read(string source)
        {
            CheckKeys(root, string.Empty);

            var machine = new MachineConfig(
                Accelerator: Choice("machine.accelerator"),
                MemoryBytes: Size("machine.memory"),
                Vcpus: (int)Integer("machine.vcpus", 1, 64),
                Kernel: PathValue("machine.kernel"),
                Hugepages: Boolean("machine.hugepages"),
                MemoryBackend: Choice("machine.memory-backend"),
                Paused: Boolean("machine.paused"),
                SyntheticPagesPerSecond: Integer("machine.synthetic.pages-per-second", 0, long.MaxValue));
            bool memoryParsed = !errors.Any(e => e.StartsWith("machine.memory:", StringComparison.Ordinal));
            if (memoryParsed && machine.MemoryBytes % 4096 != 0)
            {
                errors.Add($"machine.memory: {machine.MemoryBytes} bytes is not a multiple of the 4096-byte page size.");
            }
            else if (memoryParsed && machine.MemoryBytes < (2UL << 20))
            {
                errors.Add($"machine.memory: {ByteSize.Format(machine.MemoryBytes)} is too small; at least 2M is needed for a Multiboot guest.");
            }

            var capabilities = ConfigSchema.Capabilities.ToDictionary(c => c, c => Boolean("migration.capabilities." + c), StringComparer.Ordinal);
            if (capabilities["postcopy-ram"] && capabilities["multifd"])
            {
                errors.Add("migration.capabilities: postcopy-ram and multifd cannot both be on (as in QEMU: postcopy is not yet compatible with multifd); turn one off.");
            }

            var migration = new MigrationConfig(
                capabilities,
                DowntimeLimitMs: Integer("migration.parameters.downtime-limit", 1, 2_000_000),
                MaxBandwidth: Size("migration.parameters.max-bandwidth"),
                MultifdChannels: (int)Integer("migration.parameters.multifd-channels", 1, 255),
                FaultBackend: Text("migration.fault-backend")!,
                PostcopyListenNice: (int)Integer("migration.postcopy-listen-nice", -20, 19),
                Incoming: Text("migration.incoming"))
            {
                Throttle = new Migration.State.ThrottleParameters(
                    Initial: (int)Integer("migration.parameters.cpu-throttle-initial", 1, 99),
                    Increment: (int)Integer("migration.parameters.cpu-throttle-increment", 1, 99),
                    Max: (int)Integer("migration.parameters.max-cpu-throttle", 1, 99),
                    TriggerThreshold: (int)Integer("migration.parameters.throttle-trigger-threshold", 1, 100),
                    TailSlow: Boolean("migration.parameters.cpu-throttle-tailslow")),
                XbzrleCacheSize = Size("migration.parameters.xbzrle-cache-size"),
                LatencyThreads = Abstractions.Threading.LatencyThreads.TryParse(Choice("migration.latency-threads"), out Abstractions.Threading.LatencyThreadPolicy latency) ? latency : default,
                MaxPostcopyBandwidth = Size("migration.parameters.max-postcopy-bandwidth"),
                TlsCreds = Text("migration.parameters.tls-creds") ?? string.Empty,
                TlsHostname = Text("migration.parameters.tls-hostname") ?? string.Empty,
                TlsAuthz = Text("migration.parameters.tls-authz") ?? string.Empty,
                TlsObjects = ReadObjects(),
            };
            migration = migration with { AuthzObjects = _authzObjects };
            if (migration.TlsAuthz.Length > 0 && !_authzIds.Contains(migration.TlsAuthz))
            {
                errors.Add($"migration.parameters.tls-authz: '{migration.TlsAuthz}' is not the id of an authorization object in objects (an {Migration.Tls.TlsAuthorization.SimpleType}, {Migration.Tls.TlsAuthorization.ListType} or {Migration.Tls.TlsAuthorization.ListFileType}); add one with that id or name one of theirs.");
            }

            if (!MigrationConfig.IsValidXbzrleCacheSize(migration.XbzrleCacheSize))
            {
                errors.Add($"migration.parameters.xbzrle-cache-size: {ByteSize.Format(migration.XbzrleCacheSize)} is not a power of two of at least 4K; choose a size such as 64M.");
            }

            if (migration.TlsCreds.Length > 0 && !_objectIds.Contains(migration.TlsCreds))
            {
                string ids = _objectIds.Count == 0 ? "objects has none" : "objects has " + string.Join(", ", _objectIds.Order(StringComparer.Ordinal).Select(id => $"'{id}'"));
                errors.Add($"migration.parameters.tls-creds: '{migration.TlsCreds}' is not the id of an object in objects ({ids}); add {{\"qom-type\": \"{Migration.Tls.TlsCredentials.QomType}\", \"id\": \"{migration.TlsCreds}\", \"dir\": ...}} to objects or name one of its ids.");
            }

            var pluginDirectories = new List<string>();
            IConfigurationSection dirs = root.GetSection("plugins:directories");
            foreach (IConfigurationSection item in dirs.GetChildren())
            {
                if (string.IsNullOrWhiteSpace(item.Value))
                {
                    errors.Add($"{ToJsonPath(item.Path)}: expected a directory path (a string).");
                    continue;
                }

                pluginDirectories.Add(Path.GetFullPath(item.Value, baseDirectory));
            }

            if (dirs.Value is { Length: > 0 })
            {
                errors.Add("plugins.directories: expected a list of directory paths, found a single value; write [\"" + dirs.Value + "\"].");
            }

            return new ModularConfig(source, machine, ReadDevices(), migration, pluginDirectories, PathValue("qmp.socket"));
        }

        private List<DeviceConfig> ReadDevices()
        {
            IConfigurationSection section = root.GetSection("devices");
            if (!section.Exists())
            {
                return [new DeviceConfig(DefaultDeviceId, DefaultDeviceType, "devices[0]", new Dictionary<string, string>())];
            }

            if (section.Value is { Length: > 0 })
            {
                errors.Add("devices: expected a list of device objects like [{\"type\": \"serial\"}], found a single value.");
                return [];
            }

            var devices = new List<DeviceConfig>();
            var ids = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (IConfigurationSection item in section.GetChildren().OrderBy(c => int.TryParse(c.Key, out int i) ? i : int.MaxValue))
            {
                string path = ToJsonPath(item.Path);
                if (!int.TryParse(item.Key, NumberStyles.None, CultureInfo.InvariantCulture, out _))
                {
                    errors.Add($"devices: expected a list of device objects, found the key '{item.Key}'; write devices as [{{\"type\": ...}}, ...].");
                    continue;
                }

                var properties = new Dictionary<string, string>(StringComparer.Ordinal);
                string? type = null;
                string? id = null;
                foreach (IConfigurationSection field in item.GetChildren())
                {
                    if (field.GetChildren().Any())
                    {
                        errors.Add($"{path}.{field.Key}: expected a string, number or boolean, found an object or list.");
                        continue;
                    }

                    switch (field.Key.ToLowerInvariant())
                    {
                        case "type": type = field.Value; break;
                        case "id": id = field.Value; break;
                        default: properties[field.Key] = field.Value ?? string.Empty; break;
                    }
                }

                if (string.IsNullOrWhiteSpace(type))
                {
                    errors.Add($"{path}.type: missing; every device needs a type, for example \"serial\" (modular plugins lists the device types available).");
                    continue;
                }

                id = string.IsNullOrWhiteSpace(id) ? type + item.Key : id;
                if (ids.TryGetValue(id, out string? other))
                {
                    errors.Add($"{path}.id: '{id}' is already used by {other}; device ids must be unique.");
                    continue;
                }

                ids[id] = path;
                devices.Add(new DeviceConfig(id, type, path, properties));
            }

            return devices;
        }

        private void CheckKeys(IConfiguration node, string parent)
        {
            foreach (IConfigurationSection child in node.GetChildren())
            {
                string path = parent.Length == 0 ? child.Key : parent + "." + child.Key;
                ConfigKey? key = ConfigSchema.Find(path);
                if (key is null)
                {
                    string[] siblings = ConfigSchema.ChildrenOf(parent).Select(k => k.Name).ToArray();
                    string? nearest = Nearest(child.Key, siblings);
                    string where = parent.Length == 0 ? "at the top level" : "in " + parent;
                    errors.Add(nearest is not null
                        ? $"{path}: unknown key '{child.Key}' {where}; did you mean '{nearest}'?"
                        : $"{path}: unknown key '{child.Key}' {where}; known keys: {string.Join(", ", siblings)}.");
                    continue;
                }

                bool hasChildren = child.GetChildren().Any();
                switch (key.Kind)
                {
                    case ConfigValueKind.Section when hasChildren:
                        CheckKeys(child, path);
                        break;
                    case ConfigValueKind.Section when child.Value is { Length: > 0 }:
                        errors.Add($"{path}: expected an object, found '{child.Value}'.");
                        break;
                    case ConfigValueKind.String or ConfigValueKind.Size or ConfigValueKind.Integer or ConfigValueKind.Boolean when hasChildren:
                        errors.Add($"{path}: expected {Describe(key.Kind)}, found an object or list.");
                        break;
                }
            }
        }

        private static string Describe(ConfigValueKind kind) => kind switch
        {
            ConfigValueKind.Size => "a size like 256M or 1G",
            ConfigValueKind.Integer => "a whole number",
            ConfigValueKind.Boolean => "true or false",
            _ => "a string",
        };

        private static string Default(string path) => ConfigSchema.Find(path)!.Default;

        private string? Text(string path)
        {
            string? value = root[path.Replace('.', ':')];
            if (string.IsNullOrEmpty(value))
            {
                string d = Default(path);
                return d == "(none)" ? null : d;
            }

            return value;
        }

        private string? PathValue(string path) => Text(path) is { } p ? Path.GetFullPath(p, baseDirectory) : null;

        private string Choice(string path)
        {
            string value = Text(path)!;
            string[] choices = ConfigSchema.Find(path)!.Choices!;
            if (!choices.Contains(value, StringComparer.Ordinal))
            {
                errors.Add($"{path}: expected one of {string.Join(", ", choices)}, found '{value}'.");
            }

            return value;
        }

        private ulong Size(string path)
        {
            string value = Text(path)!;
            if (!ByteSize.TryParse(value, out ulong bytes))
            {
                errors.Add($"{path}: expected a size like 256M or 1G (bytes, or a number with K, M, G or T), found '{value}'.");
            }

            return bytes;
        }

        private long Integer(string path, long min, long max)
        {
            string value = Text(path)!;
            if (!long.TryParse(value, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long number) || number < min || number > max)
            {
                errors.Add($"{path}: expected a whole number from {min} to {max}, found '{value}'.");
            }

            return number;
        }

        private bool Boolean(string path)
        {
            string value = Text(path)!;
            if (!bool.TryParse(value, out bool result))
            {
                errors.Add($"{path}: expected true or false, found '{value}'.");
            }

            return result;
        }
    }
}
