using System.Globalization;
using Microsoft.Extensions.Configuration;
using Modular.Core.Migration.Tls;

namespace Modular.Core.Config;

/// <summary>The top-level objects list: QEMU's object-add shape, of which Modular knows tls-creds-x509.</summary>
public static partial class ConfigLoader
{
    private sealed partial class Reader
    {
        /// <summary>The keys a tls-creds-x509 object takes in the objects list.</summary>
        private static readonly string[] TlsObjectKeys = ["qom-type", "id", "dir", "endpoint", "verify-peer", "sanity-check"];

        /// <summary>The keys each authorization type takes in the objects list.</summary>
        private static readonly Dictionary<string, string[]> AuthzObjectKeys = new(StringComparer.Ordinal)
        {
            [TlsAuthorization.SimpleType] = ["qom-type", "id", "identity"],
            [TlsAuthorization.ListFileType] = ["qom-type", "id", "filename", "refresh"],
            [TlsAuthorization.ListType] = ["qom-type", "id", "policy", "rules"],
        };

        /// <summary>The authorization objects of the objects list (read by <see cref="ReadObjects"/>).</summary>
        private readonly List<AuthzObjectConfig> _authzObjects = [];

        /// <summary>The ids of the authorization objects, for tls-authz.</summary>
        private readonly HashSet<string> _authzIds = new(StringComparer.Ordinal);

        /// <summary>Every id the objects list declares, even of an object with another problem (which is reported on its own).</summary>
        private readonly HashSet<string> _objectIds = new(StringComparer.Ordinal);

        private List<TlsCredentialsConfig> ReadObjects()
        {
            IConfigurationSection section = root.GetSection("objects");
            if (section.Value is { Length: > 0 })
            {
                errors.Add($"objects: expected a list of objects like [{{\"qom-type\": \"{TlsCredentials.QomType}\", \"id\": \"tls0\", \"dir\": \"certs\"}}], found a single value.");
                return [];
            }

            var objects = new List<TlsCredentialsConfig>();
            var ids = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (IConfigurationSection item in section.GetChildren().OrderBy(c => int.TryParse(c.Key, out int i) ? i : int.MaxValue))
            {
                string path = ToJsonPath(item.Path);
                if (!int.TryParse(item.Key, NumberStyles.None, CultureInfo.InvariantCulture, out _))
                {
                    errors.Add($"objects: expected a list of objects, found the key '{item.Key}'; write objects as [{{\"qom-type\": ..., \"id\": ...}}, ...].");
                    continue;
                }

                var fields = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
                bool ok = true;
                IConfigurationSection? rules = null;
                foreach (IConfigurationSection field in item.GetChildren())
                {
                    if (field.GetChildren().Any() && string.Equals(field.Key, "rules", StringComparison.OrdinalIgnoreCase))
                    {
                        rules = field; // an authz-list's rule list (checked with its type below)
                        fields[field.Key] = string.Empty;
                    }
                    else if (field.GetChildren().Any())
                    {
                        errors.Add($"{path}.{field.Key}: expected a string or boolean, found an object or list.");
                        ok = false;
                    }
                    else
                    {
                        fields[field.Key] = field.Value ?? string.Empty;
                    }
                }

                string id = fields.GetValueOrDefault("id", string.Empty);
                if (id.Length > 0)
                {
                    _objectIds.Add(id);
                }

                string type = fields.GetValueOrDefault("qom-type", string.Empty);
                if (type.Length == 0)
                {
                    errors.Add($"{path}.qom-type: missing; every object needs a qom-type, and Modular supports: {TlsCredentials.QomType}.");
                    continue;
                }

                if (rules is not null && type != TlsAuthorization.ListType)
                {
                    errors.Add($"{path}.rules: only an {TlsAuthorization.ListType} object has a rule list.");
                    ok = false;
                }

                if (AuthzObjectKeys.TryGetValue(type, out string[]? authzKeys))
                {
                    ReadAuthorization(path, type, id, fields, authzKeys, ids, ok, rules);
                    continue;
                }

                if (type != TlsCredentials.QomType)
                {
                    errors.Add($"{path}.qom-type: object type '{type}' is not supported by Modular; supported: {TlsCredentials.QomType}, {string.Join(", ", TlsAuthorization.Types)}.");
                    continue;
                }

                foreach (string key in fields.Keys.Where(k => !TlsObjectKeys.Contains(k, StringComparer.OrdinalIgnoreCase)))
                {
                    string? nearest = Nearest(key, TlsObjectKeys);
                    errors.Add(nearest is not null
                        ? $"{path}.{key}: unknown key '{key}' in a {type} object; did you mean '{nearest}'?"
                        : $"{path}.{key}: unknown key '{key}' in a {type} object; known keys: {string.Join(", ", TlsObjectKeys)}.");
                    ok = false;
                }

                ok &= CheckId(path, id, "migration.parameters.tls-creds", ids);

                string dir = fields.GetValueOrDefault("dir", string.Empty);
                if (dir.Length == 0)
                {
                    errors.Add($"{path}.dir: missing; give the directory of the credentials' PEM files ({TlsCredentials.CaCertFile}, server-cert.pem, server-key.pem, client-cert.pem, client-key.pem), relative to the config file.");
                    ok = false;
                }

                string endpointText = fields.GetValueOrDefault("endpoint", "client");
                TlsEndpoint endpoint = TlsEndpoint.Client;
                switch (endpointText)
                {
                    case "client": break;
                    case "server": endpoint = TlsEndpoint.Server; break;
                    default:
                        errors.Add($"{path}.endpoint: expected one of client, server, found '{endpointText}' (client on the migration source, server on the destination).");
                        ok = false;
                        break;
                }

                string verifyText = fields.GetValueOrDefault("verify-peer", "true");
                if (!bool.TryParse(verifyText, out bool verifyPeer))
                {
                    errors.Add($"{path}.verify-peer: expected true or false, found '{verifyText}'.");
                    ok = false;
                }

                string sanityText = fields.GetValueOrDefault("sanity-check", "true");
                if (!bool.TryParse(sanityText, out bool sanityCheck))
                {
                    errors.Add($"{path}.sanity-check: expected true or false, found '{sanityText}'.");
                    ok = false;
                }

                if (ok)
                {
                    objects.Add(new TlsCredentialsConfig(id, Path.GetFullPath(dir, baseDirectory), endpoint, verifyPeer, path) { SanityCheck = sanityCheck });
                }
            }

            return objects;
        }

        /// <summary>An object's id: present, an identifier, unique; records it in <paramref name="ids"/>.</summary>
        private bool CheckId(string path, string id, string namedBy, Dictionary<string, string> ids)
        {
            if (id.Length == 0)
            {
                errors.Add($"{path}.id: missing; every object needs an id ({namedBy} names it).");
                return false;
            }

            if (!TlsCredentialsRegistry.IsWellFormedId(id))
            {
                errors.Add($"{path}.id: '{id}' is not an identifier; ids consist of letters, digits, '-', '.', '_', starting with a letter (as QEMU's).");
                return false;
            }

            if (ids.TryGetValue(id, out string? other))
            {
                errors.Add($"{path}.id: '{id}' is already used by {other}; object ids must be unique.");
                return false;
            }

            ids[id] = path;
            return true;
        }

        /// <summary>An authz-simple (identity), authz-list (policy, rules) or authz-listfile (filename, refresh) object.</summary>
        private void ReadAuthorization(string path, string type, string id, Dictionary<string, string> fields, string[] keys, Dictionary<string, string> ids, bool ok, IConfigurationSection? rules)
        {
            foreach (string key in fields.Keys.Where(k => !keys.Contains(k, StringComparer.OrdinalIgnoreCase)))
            {
                string? nearest = Nearest(key, keys);
                errors.Add(nearest is not null
                    ? $"{path}.{key}: unknown key '{key}' in a {type} object; did you mean '{nearest}'?"
                    : $"{path}.{key}: unknown key '{key}' in a {type} object; known keys: {string.Join(", ", keys)}.");
                ok = false;
            }

            ok &= CheckId(path, id, "migration.parameters.tls-authz", ids);
            if (id.Length > 0)
            {
                _authzIds.Add(id);
            }

            string value;
            bool refresh = true;
            if (type == TlsAuthorization.SimpleType)
            {
                value = fields.GetValueOrDefault("identity", string.Empty);
                if (value.Length == 0)
                {
                    errors.Add($"{path}.identity: missing; give the source certificate's subject as QEMU writes it, e.g. \"CN=src.example,O=Example,C=GB\".");
                    ok = false;
                }
            }
            else if (type == TlsAuthorization.ListType)
            {
                // The rule list as QEMU's JSON (authz-list's properties), checked now by the same parser.
                value = RuleListJson(fields.GetValueOrDefault("policy"), rules);
                try
                {
                    using var doc = System.Text.Json.JsonDocument.Parse(value);
                    _ = ListAuthorization.Create(id, doc.RootElement);
                }
                catch (ArgumentException ex)
                {
                    errors.Add($"{path}: {ex.Message}");
                    ok = false;
                }
            }
            else
            {
                value = fields.GetValueOrDefault("filename", string.Empty);
                if (value.Length == 0)
                {
                    errors.Add($"{path}.filename: missing; give the JSON rules file (relative to the config file).");
                    ok = false;
                }
                else
                {
                    value = Path.GetFullPath(value, baseDirectory);
                }

                string refreshText = fields.GetValueOrDefault("refresh", "true");
                if (!bool.TryParse(refreshText, out refresh))
                {
                    errors.Add($"{path}.refresh: expected true or false, found '{refreshText}'.");
                    ok = false;
                }
            }

            if (ok)
            {
                _authzObjects.Add(new AuthzObjectConfig(id, type, value, refresh, path));
            }
        }

        /// <summary>
        /// An authz-list's policy and rules as QEMU's JSON. The configuration system gives every value
        /// as text, so each value is written as a JSON string and the parser checks the rest.
        /// </summary>
        private static string RuleListJson(string? policy, IConfigurationSection? rules)
        {
            var root = new System.Text.Json.Nodes.JsonObject();
            if (!string.IsNullOrEmpty(policy))
            {
                root["policy"] = policy;
            }

            if (rules is not null)
            {
                var list = new System.Text.Json.Nodes.JsonArray();
                foreach (IConfigurationSection rule in rules.GetChildren().OrderBy(c => int.TryParse(c.Key, out int i) ? i : int.MaxValue))
                {
                    var entry = new System.Text.Json.Nodes.JsonObject();
                    foreach (IConfigurationSection property in rule.GetChildren())
                    {
                        entry[property.Key] = property.Value;
                    }

                    list.Add(rule.Value is null ? entry : rule.Value);
                }

                root["rules"] = list;
            }

            return root.ToJsonString();
        }
    }
}
