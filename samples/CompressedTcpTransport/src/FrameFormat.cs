using System.Buffers.Binary;
using System.IO.Compression;

namespace Example.Tcpz;

/// <summary>
/// One frame on the wire: be32 raw length, be32 payload length, u8 kind (0 stored, 1 Brotli), payload.
/// A frame carries at most <see cref="MaxRaw"/> bytes of stream.
/// </summary>
internal static class FrameFormat
{
    public const int HeaderSize = 9;
    public const int MaxRaw = 64 * 1024;
    public const byte Stored = 0;
    public const byte Brotli = 1;
    private const int Quality = 1;
    private const int Window = 22;

    /// <summary>The most a payload can take: Brotli's bound for <see cref="MaxRaw"/>.</summary>
    public static int MaxPayload { get; } = BrotliEncoder.GetMaxCompressedLength(MaxRaw);

    /// <summary>Encodes <paramref name="raw"/> into <paramref name="frame"/> (header and payload); returns the frame length.</summary>
    public static int Encode(ReadOnlySpan<byte> raw, Span<byte> frame)
    {
        Span<byte> payload = frame[HeaderSize..];
        byte kind = Brotli;
        if (!BrotliEncoder.TryCompress(raw, payload, out int length, Quality, Window) || length >= raw.Length)
        {
            raw.CopyTo(payload);
            length = raw.Length;
            kind = Stored;
        }

        BinaryPrimitives.WriteInt32BigEndian(frame, raw.Length);
        BinaryPrimitives.WriteInt32BigEndian(frame[4..], length);
        frame[8] = kind;
        return HeaderSize + length;
    }

    /// <summary>Reads a header; throws <see cref="InvalidDataException"/> when it cannot be one of ours.</summary>
    public static (int Raw, int Payload, byte Kind) ReadHeader(ReadOnlySpan<byte> header)
    {
        int raw = BinaryPrimitives.ReadInt32BigEndian(header);
        int payload = BinaryPrimitives.ReadInt32BigEndian(header[4..]);
        byte kind = header[8];
        if (raw is <= 0 or > MaxRaw || payload <= 0 || payload > MaxPayload || kind > Brotli || (kind == Stored && payload != raw))
        {
            throw new InvalidDataException($"a frame header says {raw} bytes in {payload} bytes of kind {kind}, which no tcpz sender writes");
        }

        return (raw, payload, kind);
    }

    /// <summary>Decodes a payload into exactly <paramref name="raw"/>.Length bytes.</summary>
    public static void Decode(ReadOnlySpan<byte> payload, byte kind, Span<byte> raw)
    {
        if (kind == Stored)
        {
            payload.CopyTo(raw);
            return;
        }

        if (!BrotliDecoder.TryDecompress(payload, raw, out int written) || written != raw.Length)
        {
            throw new InvalidDataException($"a Brotli frame did not decode to the {raw.Length} bytes its header promised");
        }
    }
}
