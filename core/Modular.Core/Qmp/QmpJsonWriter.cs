using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Modular.Core.Qmp;

/// <summary>
/// Writes JSON the way QEMU's monitor does: one line, <c>", "</c> and <c>": "</c> separators, pure
/// ASCII (anything else as <c>\uXXXX</c>), so that socat users read what they would read from QEMU.
/// </summary>
internal static class QmpJsonWriter
{
    /// <summary>One message as the wire carries it: the JSON text followed by CRLF, ASCII-encoded.</summary>
    /// <param name="message">The message object.</param>
    public static byte[] ToWireBytes(JsonNode message)
    {
        var text = new StringBuilder(128);
        Write(text, message);
        text.Append("\r\n");
        return Encoding.ASCII.GetBytes(text.ToString());
    }

    /// <summary>The JSON text of <paramref name="node"/>, without a line ending.</summary>
    /// <param name="node">Any JSON node; null is written as <c>null</c>.</param>
    public static string ToText(JsonNode? node)
    {
        var text = new StringBuilder(64);
        Write(text, node);
        return text.ToString();
    }

    private static void Write(StringBuilder text, JsonNode? node)
    {
        switch (node)
        {
            case null:
                text.Append("null");
                break;
            case JsonObject obj:
                text.Append('{');
                bool firstMember = true;
                foreach (KeyValuePair<string, JsonNode?> member in obj)
                {
                    text.Append(firstMember ? "" : ", ");
                    firstMember = false;
                    WriteString(text, member.Key);
                    text.Append(": ");
                    Write(text, member.Value);
                }

                text.Append('}');
                break;
            case JsonArray array:
                text.Append('[');
                for (int i = 0; i < array.Count; i++)
                {
                    text.Append(i == 0 ? "" : ", ");
                    Write(text, array[i]);
                }

                text.Append(']');
                break;
            default:
                WriteValue(text, node.AsValue());
                break;
        }
    }

    private static void WriteValue(StringBuilder text, JsonValue value)
    {
        switch (value.GetValueKind())
        {
            case JsonValueKind.String:
                WriteString(text, value.GetValue<string>());
                break;
            case JsonValueKind.True:
                text.Append("true");
                break;
            case JsonValueKind.False:
                text.Append("false");
                break;
            case JsonValueKind.Null:
                text.Append("null");
                break;
            default:
                // Numbers: System.Text.Json already writes them in the shortest round-trippable form.
                text.Append(value.ToJsonString());
                break;
        }
    }

    private static void WriteString(StringBuilder text, string value)
    {
        text.Append('"');
        foreach (char c in value)
        {
            switch (c)
            {
                case '"': text.Append("\\\""); break;
                case '\\': text.Append("\\\\"); break;
                case '\b': text.Append("\\b"); break;
                case '\f': text.Append("\\f"); break;
                case '\n': text.Append("\\n"); break;
                case '\r': text.Append("\\r"); break;
                case '\t': text.Append("\\t"); break;
                default:
                    if (c < 0x20 || c > 0x7E)
                    {
                        text.Append("\\u").Append(((int)c).ToString("X4", CultureInfo.InvariantCulture));
                    }
                    else
                    {
                        text.Append(c);
                    }

                    break;
            }
        }

        text.Append('"');
    }
}
