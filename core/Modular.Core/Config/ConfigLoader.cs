using System.Globalization;
using System.Text.Json;
using Microsoft.Extensions.Configuration;
using Modular.Abstractions.Devices;

namespace Modular.Core.Config;

/// <summary>
/// Reads a config file with Microsoft.Extensions.Configuration, applies single-key overrides, and
/// validates everything up front: every problem is reported at once, naming its JSON path.
/// </summary>
public static partial class ConfigLoader
{
    /// <summary>The device type of the default device list (one serial port).</summary>
    internal const string DefaultDeviceType = "serial";

    /// <summary>The device id of the default device list.</summary>
    internal const string DefaultDeviceId = "com1";

    /// <summary>Loads and validates <paramref name="path"/> (or the defaults when null) with <paramref name="overrides"/> applied.</summary>
    /// <param name="path">The JSON config file, or null to start from the defaults.</param>
    /// <param name="overrides">Single keys as dotted paths (<c>machine.memory</c>, <c>devices[0].output</c>) and values.</param>
    /// <exception cref="ConfigException">The file is missing or malformed, or a key is unknown or has a bad value.</exception>
    public static ModularConfig Load(string? path, IEnumerable<KeyValuePair<string, string>>? overrides = null)
    {
        string source = path is null ? "defaults" : Path.GetFullPath(path);
        string baseDirectory = path is null ? Directory.GetCurrentDirectory() : Path.GetDirectoryName(source)!;
        var builder = new ConfigurationBuilder();
        bool fileHasDevices = false;
        if (path is not null)
        {
            fileHasDevices = CheckJsonSyntax(source);
            builder.AddJsonFile(source, optional: false, reloadOnChange: false);
        }

        var errors = new List<string>();
        var overrideKeys = new Dictionary<string, string?>(StringComparer.OrdinalIgnoreCase);
        foreach ((string key, string value) in overrides ?? [])
        {
            string? configKey = ToConfigurationKey(key);
            if (configKey is null)
            {
                errors.Add($"override '{key}': not a key path like machine.memory or devices[0].output.");
                continue;
            }

            overrideKeys[configKey] = value;
        }

        // Without a devices list in the file, overrides of devices[N] start from the default list
        // (one serial, com1): --set devices[1].type=debug-exit adds a device beside it and
        // devices[0].output configures it, while devices[0].type replaces it.
        if (!fileHasDevices && overrideKeys.Keys.Any(k => k.StartsWith("devices:", StringComparison.OrdinalIgnoreCase)) && !overrideKeys.ContainsKey("devices:0:type"))
        {
            builder.AddInMemoryCollection(new Dictionary<string, string?>
            {
                ["devices:0:type"] = DefaultDeviceType,
                ["devices:0:id"] = DefaultDeviceId,
            });
        }

        builder.AddInMemoryCollection(overrideKeys);
        IConfigurationRoot root;
        try
        {
            root = builder.Build();
        }
        catch (Exception ex) when (ex is FormatException or InvalidDataException or IOException)
        {
            throw new ConfigException($"{source}: {ex.Message}", ex);
        }

        var reader = new Reader(root, baseDirectory, errors);
        ModularConfig config = reader.Read(source);
        if (errors.Count > 0)
        {
            throw new ConfigException(source, errors);
        }

        return config;
    }

    /// <summary>Turns <c>devices[0].output</c> into the configuration key <c>devices:0:output</c>.</summary>
    /// <param name="dotted">A dotted JSON path.</param>
    /// <returns>The key, or null when the path is malformed.</returns>
    public static string? ToConfigurationKey(string dotted)
    {
        if (string.IsNullOrWhiteSpace(dotted))
        {
            return null;
        }

        string key = dotted.Trim().Replace("[", ".", StringComparison.Ordinal).Replace("]", string.Empty, StringComparison.Ordinal);
        string[] parts = key.Split('.');
        return parts.Any(string.IsNullOrWhiteSpace) ? null : string.Join(':', parts);
    }

    /// <summary>Turns the configuration key <c>devices:0:output</c> into the JSON path <c>devices[0].output</c>.</summary>
    /// <param name="configurationPath">A configuration key.</param>
    public static string ToJsonPath(string configurationPath)
    {
        var sb = new System.Text.StringBuilder();
        foreach (string part in configurationPath.Split(':'))
        {
            if (int.TryParse(part, NumberStyles.None, CultureInfo.InvariantCulture, out _))
            {
                sb.Append('[').Append(part).Append(']');
            }
            else
            {
                if (sb.Length > 0)
                {
                    sb.Append('.');
                }

                sb.Append(part);
            }
        }

        return sb.ToString();
    }

    /// <summary>Checks that <paramref name="file"/> is a JSON object; returns true when it has a devices key.</summary>
    private static bool CheckJsonSyntax(string file)
    {
        byte[] bytes;
        try
        {
            bytes = File.ReadAllBytes(file);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new ConfigException($"Config file '{file}' cannot be read: {ex.Message}", ex);
        }

        try
        {
            using JsonDocument doc = JsonDocument.Parse(bytes, new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip });
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
            {
                throw new ConfigException(file, [$"the top level must be a JSON object with the sections machine, devices, objects, migration, plugins and qmp; found {doc.RootElement.ValueKind}."]);
            }

            return doc.RootElement.EnumerateObject().Any(p => p.Name.Equals("devices", StringComparison.OrdinalIgnoreCase));
        }
        catch (JsonException ex)
        {
            long line = (ex.LineNumber ?? 0) + 1;
            long column = (ex.BytePositionInLine ?? 0) + 1;
            string reason = ex.Message.Split(" Path:", 2)[0].Split(" LineNumber:", 2)[0];
            throw new ConfigException(file, [$"malformed JSON at line {line}, column {column}: {reason}"]);
        }
    }

    /// <summary>The closest of <paramref name="candidates"/> to <paramref name="key"/>, or null when none is close.</summary>
    /// <param name="key">The unknown key.</param>
    /// <param name="candidates">The known keys at that level.</param>
    internal static string? Nearest(string key, IEnumerable<string> candidates)
    {
        string? best = null;
        int bestDistance = int.MaxValue;
        foreach (string candidate in candidates)
        {
            int d = Distance(key.ToLowerInvariant(), candidate.ToLowerInvariant());
            if (d < bestDistance)
            {
                bestDistance = d;
                best = candidate;
            }
        }

        return best is not null && bestDistance <= Math.Max(2, best.Length / 2) ? best : null;
    }

    private static int Distance(string a, string b)
    {
        int[] previous = Enumerable.Range(0, b.Length + 1).ToArray();
        int[] current = new int[b.Length + 1];
        for (int i = 1; i <= a.Length; i++)
        {
            current[0] = i;
            for (int j = 1; j <= b.Length; j++)
            {
                int cost = a[i - 1] == b[j - 1] ? 0 : 1;
                current[j] = Math.Min(Math.Min(current[j - 1] + 1, previous[j] + 1), previous[j - 1] + cost);
            }

            (previous, current) = (current, previous);
        }

        return previous[b.Length];
    }
}
