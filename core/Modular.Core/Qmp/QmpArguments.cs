using System.Text.Json;
using System.Text.Json.Nodes;

namespace Modular.Core.Qmp;

/// <summary>
/// The <c>arguments</c> object of one QMP command, with typed getters that fail the way QEMU's
/// QAPI input visitor does: a <see cref="QmpException"/> of class <c>GenericError</c> reading
/// <c>Parameter 'x' is missing</c>, <c>Invalid parameter type for 'x', expected: integer</c>,
/// <c>Parameter 'x' expects uint64</c> or <c>Parameter 'x' does not accept value 'v'</c>.
/// Handlers should read every argument before doing anything, so that a bad argument is reported
/// before any side effect (as QEMU promises).
/// </summary>
public sealed class QmpArguments
{
    private readonly JsonObject _arguments;

    /// <summary>Wraps a parsed <c>arguments</c> object.</summary>
    /// <param name="arguments">The object; it is read, never changed.</param>
    public QmpArguments(JsonObject arguments)
    {
        _arguments = arguments;
    }

    /// <summary>No arguments at all.</summary>
    public static QmpArguments Empty => new(new JsonObject());

    /// <summary>The argument names the client sent, in order.</summary>
    public IEnumerable<string> Names => _arguments.Select(pair => pair.Key);

    /// <summary>True when the client sent <paramref name="name"/> (even as JSON null).</summary>
    /// <param name="name">The argument name.</param>
    public bool Has(string name) => _arguments.ContainsKey(name);

    /// <summary>A required QAPI <c>int</c> (int64).</summary>
    /// <param name="name">The argument name.</param>
    public long GetInt64(string name) => TryInt64(Required(name), out long value) ? value : throw TypeError(name, "integer");

    /// <summary>An optional QAPI <c>int</c> (int64); null when absent.</summary>
    /// <param name="name">The argument name.</param>
    public long? GetOptionalInt64(string name) => Has(name) ? GetInt64(name) : null;

    /// <summary>A required QAPI <c>uint64</c> or <c>size</c>; negative integers wrap, as in QEMU.</summary>
    /// <param name="name">The argument name.</param>
    public ulong GetUInt64(string name)
    {
        JsonNode? node = Required(name);
        if (TryUInt64(node, out ulong unsigned))
        {
            return unsigned;
        }

        if (TryInt64(node, out long signed))
        {
            return unchecked((ulong)signed);
        }

        throw QmpException.Generic($"Parameter '{name}' expects uint64");
    }

    /// <summary>An optional QAPI <c>uint64</c> or <c>size</c>; null when absent.</summary>
    /// <param name="name">The argument name.</param>
    public ulong? GetOptionalUInt64(string name) => Has(name) ? GetUInt64(name) : null;

    /// <summary>A required QAPI <c>number</c> (double); integers are accepted.</summary>
    /// <param name="name">The argument name.</param>
    public double GetNumber(string name)
    {
        JsonNode? node = Required(name);
        return node is JsonValue value && value.GetValueKind() == JsonValueKind.Number
            ? value.GetValue<double>()
            : throw TypeError(name, "number");
    }

    /// <summary>An optional QAPI <c>number</c>; null when absent.</summary>
    /// <param name="name">The argument name.</param>
    public double? GetOptionalNumber(string name) => Has(name) ? GetNumber(name) : null;

    /// <summary>A required QAPI <c>bool</c>.</summary>
    /// <param name="name">The argument name.</param>
    public bool GetBoolean(string name)
    {
        JsonNode? node = Required(name);
        return node?.GetValueKind() switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw TypeError(name, "boolean"),
        };
    }

    /// <summary>An optional QAPI <c>bool</c>; null when absent.</summary>
    /// <param name="name">The argument name.</param>
    public bool? GetOptionalBoolean(string name) => Has(name) ? GetBoolean(name) : null;

    /// <summary>A required QAPI <c>str</c>.</summary>
    /// <param name="name">The argument name.</param>
    public string GetString(string name)
    {
        JsonNode? node = Required(name);
        return node?.GetValueKind() == JsonValueKind.String ? node.GetValue<string>() : throw TypeError(name, "string");
    }

    /// <summary>An optional QAPI <c>str</c>; null when absent.</summary>
    /// <param name="name">The argument name.</param>
    public string? GetOptionalString(string name) => Has(name) ? GetString(name) : null;

    /// <summary>
    /// An optional QAPI <c>StrOrNull</c>, as QEMU's tls-creds and tls-hostname: null when absent, and
    /// the empty string for JSON null (QEMU's way of resetting such a parameter to none).
    /// </summary>
    /// <param name="name">The argument name.</param>
    public string? GetOptionalStringOrNull(string name)
    {
        if (!_arguments.TryGetPropertyValue(name, out JsonNode? node))
        {
            return null;
        }

        return node switch
        {
            null => string.Empty,
            _ when node.GetValueKind() == JsonValueKind.String => node.GetValue<string>(),
            _ => throw TypeError(name, "StrOrNull"),
        };
    }

    /// <summary>A required QAPI enum member, given as a string that must be one of <paramref name="allowed"/>.</summary>
    /// <param name="name">The argument name.</param>
    /// <param name="allowed">The enum's members, as QEMU spells them.</param>
    public string GetEnum(string name, IReadOnlyCollection<string> allowed)
    {
        string value = GetString(name);
        return allowed.Contains(value, StringComparer.Ordinal)
            ? value
            : throw QmpException.Generic($"Parameter '{name}' does not accept value '{value}'");
    }

    /// <summary>A required JSON object (a QAPI struct); the caller reads its members.</summary>
    /// <param name="name">The argument name.</param>
    public JsonObject GetObject(string name) => Required(name) as JsonObject ?? throw TypeError(name, "object");

    /// <summary>A required JSON array (a QAPI list).</summary>
    /// <param name="name">The argument name.</param>
    public JsonArray GetArray(string name) => Required(name) as JsonArray ?? throw TypeError(name, "array");

    /// <summary>An optional JSON array; null when absent.</summary>
    /// <param name="name">The argument name.</param>
    public JsonArray? GetOptionalArray(string name) => Has(name) ? GetArray(name) : null;

    private JsonNode? Required(string name) =>
        _arguments.TryGetPropertyValue(name, out JsonNode? node)
            ? node
            : throw QmpException.Generic($"Parameter '{name}' is missing");

    private static QmpException TypeError(string name, string expected) =>
        QmpException.Generic($"Invalid parameter type for '{name}', expected: {expected}");

    private static bool TryInt64(JsonNode? node, out long value)
    {
        value = 0;
        if (node is not JsonValue json || json.GetValueKind() != JsonValueKind.Number)
        {
            return false;
        }

        return json.TryGetValue(out JsonElement element) ? element.TryGetInt64(out value) : json.TryGetValue(out value);
    }

    private static bool TryUInt64(JsonNode? node, out ulong value)
    {
        value = 0;
        if (node is not JsonValue json || json.GetValueKind() != JsonValueKind.Number)
        {
            return false;
        }

        return json.TryGetValue(out JsonElement element) ? element.TryGetUInt64(out value) : json.TryGetValue(out value);
    }
}
