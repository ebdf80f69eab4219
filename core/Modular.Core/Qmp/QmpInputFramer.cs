namespace Modular.Core.Qmp;

/// <summary>One unit of client input: either the bytes of one JSON value, or a lexical error.</summary>
/// <param name="Json">The JSON text of one value (objects, arrays or a bare scalar), or null on error.</param>
/// <param name="Error">QEMU's error text for input that could not be framed, or null.</param>
internal readonly record struct QmpInput(byte[]? Json, string? Error);

/// <summary>
/// Splits the client's byte stream into JSON values the way QEMU's JSON streamer does: a value ends
/// when its braces and brackets balance, not at a newline, so a command may span lines and several
/// may share one. QEMU's extensions are honoured: <c>'single-quoted'</c> strings (rewritten to
/// double quotes here so System.Text.Json can parse them) and the <c>\'</c> escape. A control
/// character other than tab, CR and LF, or a 0xFF/0xFE byte, is a lexical error that discards the
/// partial value: this is how clients put the parser back into a known-good state (qmp-spec).
/// Runs on the session's read loop only; not thread-safe.
/// </summary>
internal sealed class QmpInputFramer
{
    /// <summary>QEMU's MAX_TOKEN_SIZE: no single message may be larger.</summary>
    internal const int MaxMessageBytes = 64 << 20;

    /// <summary>QEMU's MAX_NESTING.</summary>
    internal const int MaxNesting = 1024;

    private readonly List<byte> _buffer = new(256);
    private int _depth;
    private byte _quote;          // 0 outside a string, else '"' or '\''
    private bool _escape;         // the previous byte inside a string was a backslash
    private bool _inScalar;       // inside a bare top-level keyword or number
    private bool _skipping;       // discarding the rest of an oversized or too-deep value

    /// <summary>Feeds bytes just read; complete values and errors are appended to <paramref name="output"/>.</summary>
    /// <param name="data">Bytes from the socket.</param>
    /// <param name="output">Receives what became complete.</param>
    public void Feed(ReadOnlySpan<byte> data, List<QmpInput> output)
    {
        foreach (byte b in data)
        {
            Feed(b, output);
        }
    }

    private void Feed(byte b, List<QmpInput> output)
    {
        if ((b < 0x20 && b is not ((byte)'\t' or (byte)'\n' or (byte)'\r')) || b >= 0xFE)
        {
            Reset();
            char shown = b >= 0xFE ? '\uFFFD' : (char)b;
            output.Add(new QmpInput(null, $"JSON parse error, stray '{shown}'"));
            return;
        }

        if (_skipping)
        {
            // QEMU resynchronises at the next balanced end; we do the same crudely: at a newline.
            if (b == (byte)'\n')
            {
                Reset();
            }

            return;
        }

        if (_quote != 0)
        {
            FeedInString(b, output);
        }
        else if (_inScalar && (IsWhitespace(b) || IsDelimiter(b)))
        {
            Emit(output);
            Feed(b, output);
        }
        else if (_inScalar)
        {
            Append(b, output);
        }
        else
        {
            FeedStructural(b, output);
        }
    }

    private void FeedInString(byte b, List<QmpInput> output)
    {
        if (_escape)
        {
            _escape = false;
            if (b != (byte)'\'')
            {
                Append((byte)'\\', output);
            }

            Append(b, output);
            return;
        }

        if (b == (byte)'\\')
        {
            _escape = true;
        }
        else if (b == _quote)
        {
            _quote = 0;
            Append((byte)'"', output);
            if (_depth == 0)
            {
                Emit(output);
            }
        }
        else if (b == (byte)'"')
        {
            // Only reachable inside a single-quoted string: a literal double quote.
            Append((byte)'\\', output);
            Append(b, output);
        }
        else
        {
            Append(b, output);
        }
    }

    private void FeedStructural(byte b, List<QmpInput> output)
    {
        switch (b)
        {
            case (byte)'"' or (byte)'\'':
                _quote = b;
                Append((byte)'"', output);
                break;
            case (byte)'{' or (byte)'[':
                _depth++;
                if (_depth > MaxNesting)
                {
                    Overflow("JSON nesting depth limit exceeded", output);
                    return;
                }

                Append(b, output);
                break;
            case (byte)'}' or (byte)']':
                _depth--;
                Append(b, output);
                if (_depth <= 0)
                {
                    Emit(output);
                }

                break;
            default:
                if (IsWhitespace(b))
                {
                    if (_depth > 0)
                    {
                        Append(b, output);
                    }
                }
                else
                {
                    _inScalar = _depth == 0;
                    Append(b, output);
                    if (_depth == 0 && IsDelimiter(b))
                    {
                        // A stray ',' or ':' at the top level is a value of its own (and an error).
                        _inScalar = false;
                        Emit(output);
                    }
                }

                break;
        }
    }

    private void Append(byte b, List<QmpInput> output)
    {
        if (_buffer.Count >= MaxMessageBytes)
        {
            Overflow("JSON token size limit exceeded", output);
            return;
        }

        _buffer.Add(b);
    }

    private void Overflow(string error, List<QmpInput> output)
    {
        Reset();
        _skipping = true;
        output.Add(new QmpInput(null, error));
    }

    private void Emit(List<QmpInput> output)
    {
        if (_skipping)
        {
            return;
        }

        if (_buffer.Count > 0)
        {
            output.Add(new QmpInput(_buffer.ToArray(), null));
        }

        Reset();
    }

    private void Reset()
    {
        _buffer.Clear();
        _depth = 0;
        _quote = 0;
        _escape = false;
        _inScalar = false;
        _skipping = false;
    }

    private static bool IsWhitespace(byte b) => b is (byte)' ' or (byte)'\t' or (byte)'\n' or (byte)'\r';

    private static bool IsDelimiter(byte b) =>
        b is (byte)'{' or (byte)'}' or (byte)'[' or (byte)']' or (byte)',' or (byte)':' or (byte)'"' or (byte)'\'';
}
