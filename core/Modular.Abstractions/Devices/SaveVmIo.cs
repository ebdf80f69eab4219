using System.Buffers.Binary;
using System.Text;

namespace Modular.Abstractions.Devices;

/// <summary>Writes a device's state in QEMU's big-endian field encoding (qemu_put_be32 and friends).</summary>
public sealed class SaveVmWriter
{
    private readonly List<byte> _bytes = new();

    /// <summary>The bytes written so far.</summary>
    public ReadOnlySpan<byte> WrittenSpan => System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_bytes);

    /// <summary>The number of bytes written so far.</summary>
    public int Length => _bytes.Count;

    /// <summary>Writes one byte.</summary>
    /// <param name="value">The value.</param>
    public void WriteU8(byte value) => _bytes.Add(value);

    /// <summary>Writes a big-endian 16-bit value.</summary>
    /// <param name="value">The value.</param>
    public void WriteBe16(ushort value) { Span<byte> b = stackalloc byte[2]; BinaryPrimitives.WriteUInt16BigEndian(b, value); WriteBytes(b); }

    /// <summary>Writes a big-endian 32-bit value.</summary>
    /// <param name="value">The value.</param>
    public void WriteBe32(uint value) { Span<byte> b = stackalloc byte[4]; BinaryPrimitives.WriteUInt32BigEndian(b, value); WriteBytes(b); }

    /// <summary>Writes a big-endian 64-bit value.</summary>
    /// <param name="value">The value.</param>
    public void WriteBe64(ulong value) { Span<byte> b = stackalloc byte[8]; BinaryPrimitives.WriteUInt64BigEndian(b, value); WriteBytes(b); }

    /// <summary>Writes raw bytes.</summary>
    /// <param name="value">The bytes.</param>
    public void WriteBytes(ReadOnlySpan<byte> value) { foreach (byte b in value) { _bytes.Add(b); } }

    /// <summary>Writes a be32 length and the bytes.</summary>
    /// <param name="value">The bytes.</param>
    public void WriteBuffer(ReadOnlySpan<byte> value) { WriteBe32((uint)value.Length); WriteBytes(value); }

    /// <summary>Writes a u8 length and the UTF-8 string (at most 255 bytes), as QEMU writes idstrs.</summary>
    /// <param name="value">The string.</param>
    public void WriteShortString(string value)
    {
        byte[] utf8 = Encoding.UTF8.GetBytes(value);
        if (utf8.Length > 255) { throw new ArgumentException($"'{value}' is longer than 255 bytes.", nameof(value)); }
        WriteU8((byte)utf8.Length);
        WriteBytes(utf8);
    }

    /// <summary>A copy of the bytes written.</summary>
    public byte[] ToArray() => _bytes.ToArray();
}

/// <summary>
/// Reads a device's state. Every read checks the length first; running past the end throws
/// <see cref="DeviceStateException"/> naming the section and the offset.
/// </summary>
public sealed class SaveVmReader
{
    private readonly ReadOnlyMemory<byte> _data;

    /// <summary>Reads <paramref name="data"/>, the body of section <paramref name="sectionName"/>.</summary>
    /// <param name="data">The section body.</param>
    /// <param name="sectionName">Used in error messages (e.g. <c>serial/0</c>).</param>
    public SaveVmReader(ReadOnlyMemory<byte> data, string sectionName)
    {
        _data = data;
        SectionName = sectionName;
    }

    /// <summary>The section name used in error messages.</summary>
    public string SectionName { get; }

    /// <summary>The offset of the next byte to read.</summary>
    public int Position { get; private set; }

    /// <summary>How many bytes are left.</summary>
    public int Remaining => _data.Length - Position;

    private ReadOnlySpan<byte> Take(int count, string what)
    {
        if (count < 0 || Remaining < count)
        {
            throw new DeviceStateException(
                $"Section '{SectionName}' is truncated: {what} needs {count} bytes at offset {Position}, {Remaining} left.");
        }

        ReadOnlySpan<byte> span = _data.Span.Slice(Position, count);
        Position += count;
        return span;
    }

    /// <summary>Reads one byte.</summary>
    /// <param name="what">The field name, for errors.</param>
    public byte ReadU8(string what = "u8") => Take(1, what)[0];

    /// <summary>Reads a big-endian 16-bit value.</summary>
    /// <param name="what">The field name, for errors.</param>
    public ushort ReadBe16(string what = "be16") => BinaryPrimitives.ReadUInt16BigEndian(Take(2, what));

    /// <summary>Reads a big-endian 32-bit value.</summary>
    /// <param name="what">The field name, for errors.</param>
    public uint ReadBe32(string what = "be32") => BinaryPrimitives.ReadUInt32BigEndian(Take(4, what));

    /// <summary>Reads a big-endian 64-bit value.</summary>
    /// <param name="what">The field name, for errors.</param>
    public ulong ReadBe64(string what = "be64") => BinaryPrimitives.ReadUInt64BigEndian(Take(8, what));

    /// <summary>Reads <paramref name="count"/> raw bytes.</summary>
    /// <param name="count">How many.</param>
    /// <param name="what">The field name, for errors.</param>
    public ReadOnlySpan<byte> ReadBytes(int count, string what = "bytes") => Take(count, what);

    /// <summary>Reads a be32 length and that many bytes; refuses lengths over <paramref name="maxLength"/>.</summary>
    /// <param name="maxLength">The largest acceptable length.</param>
    /// <param name="what">The field name, for errors.</param>
    public ReadOnlySpan<byte> ReadBuffer(int maxLength, string what = "buffer")
    {
        uint length = ReadBe32(what + " length");
        if (length > (uint)maxLength)
        {
            throw new DeviceStateException($"Section '{SectionName}': {what} length {length} at offset {Position - 4} exceeds the maximum {maxLength}.");
        }

        return Take((int)length, what);
    }

    /// <summary>Reads a u8 length and a UTF-8 string.</summary>
    /// <param name="what">The field name, for errors.</param>
    public string ReadShortString(string what = "string")
    {
        int length = ReadU8(what + " length");
        return Encoding.UTF8.GetString(Take(length, what));
    }

    /// <summary>Throws unless every byte was read: trailing bytes mean the writer and reader disagree.</summary>
    public void ExpectEnd()
    {
        if (Remaining != 0)
        {
            throw new DeviceStateException($"Section '{SectionName}' has {Remaining} unexpected trailing bytes at offset {Position}.");
        }
    }
}
