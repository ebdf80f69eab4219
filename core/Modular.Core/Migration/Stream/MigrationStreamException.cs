namespace Modular.Core.Migration.Stream;

/// <summary>
/// The migration stream could not be read or does not follow the format. The message names the byte
/// offset in the stream and the record being read, for example
/// <c>Migration stream error at byte 4123: section START: unknown section id 'foo'.</c>
/// </summary>
public sealed class MigrationStreamException : Exception
{
    /// <summary>Creates the exception.</summary>
    public MigrationStreamException() : base("Migration stream error.") { Record = string.Empty; Detail = string.Empty; }

    /// <summary>Creates the exception with a plain message.</summary>
    /// <param name="message">The message.</param>
    public MigrationStreamException(string message) : base(message) { Record = string.Empty; Detail = message; }

    /// <summary>Creates the exception with a plain message and its cause.</summary>
    /// <param name="message">The message.</param>
    /// <param name="innerException">The cause.</param>
    public MigrationStreamException(string message, Exception innerException) : base(message, innerException) { Record = string.Empty; Detail = message; }

    /// <summary>Creates the exception for a failure at <paramref name="offset"/> while reading <paramref name="record"/>.</summary>
    /// <param name="offset">Byte offset in the stream (from the header's first byte).</param>
    /// <param name="record">The record being read, e.g. <c>section START</c>.</param>
    /// <param name="detail">What is wrong, and where it helps, what to do.</param>
    /// <param name="innerException">The cause, if any.</param>
    public MigrationStreamException(long offset, string record, string detail, Exception? innerException = null)
        : base(Format(offset, record, detail), innerException)
    {
        Offset = offset;
        Record = record;
        Detail = detail;
    }

    /// <summary>Byte offset in the stream where the problem was found.</summary>
    public long Offset { get; }

    /// <summary>The record being read.</summary>
    public string Record { get; }

    /// <summary>The problem, without offset and record.</summary>
    public string Detail { get; }

    private static string Format(long offset, string record, string detail)
    {
        string text = $"Migration stream error at byte {offset}: {record}: {detail}";
        return text.EndsWith('.') ? text : text + ".";
    }
}
