using System.Buffers;
using System.Buffers.Binary;
using System.Text;

namespace Modular.Core.Migration.Stream;

/// <summary>
/// A return-path message (destination to source): be16 type, be16 length, payload. One value type for
/// all kinds so that the fault thread can send REQ_PAGES without allocating; the fields a kind does
/// not use are zero/null. Build them with the static factories.
/// </summary>
/// <param name="Type">The message type.</param>
/// <param name="Start">REQ_PAGES(_ID): byte offset in the RAM block.</param>
/// <param name="Length">REQ_PAGES(_ID): byte count.</param>
/// <param name="Value">SHUT: error flag; PONG: ping value; RESUME_ACK: 1.</param>
/// <param name="BlockId">REQ_PAGES_ID and RECV_BITMAP: the RAM block id.</param>
public readonly record struct ReturnPathMessage(ReturnPathMessageType Type, ulong Start, uint Length, uint Value, string? BlockId)
{
    /// <summary>SHUT with an error flag (0: finished fine).</summary>
    public static ReturnPathMessage Shut(uint error) => new(ReturnPathMessageType.Shut, 0, 0, error, null);

    /// <summary>PONG echoing a PING.</summary>
    public static ReturnPathMessage Pong(uint value) => new(ReturnPathMessageType.Pong, 0, 0, value, null);

    /// <summary>REQ_PAGES_ID: pages of a named block (used when the block differs from the previous request).</summary>
    public static ReturnPathMessage ReqPagesId(ulong start, uint length, string blockId) => new(ReturnPathMessageType.ReqPagesId, start, length, 0, blockId);

    /// <summary>REQ_PAGES: pages of the same block as the previous request.</summary>
    public static ReturnPathMessage ReqPages(ulong start, uint length) => new(ReturnPathMessageType.ReqPages, start, length, 0, null);

    /// <summary>RECV_BITMAP: announces the received bitmap of a block, which follows (see <see cref="ReceivedBitmap"/>).</summary>
    public static ReturnPathMessage RecvBitmap(string blockId) => new(ReturnPathMessageType.RecvBitmap, 0, 0, 0, blockId);

    /// <summary>RESUME_ACK with QEMU's only value, 1.</summary>
    public static ReturnPathMessage ResumeAck() => new(ReturnPathMessageType.ResumeAck, 0, 0, StreamFormat.ResumeAckValue, null);

    /// <summary>SWITCHOVER_ACK.</summary>
    public static ReturnPathMessage SwitchoverAck() => new(ReturnPathMessageType.SwitchoverAck, 0, 0, 0, null);

    /// <summary>The record name used in errors, e.g. <c>return-path REQ_PAGES</c>.</summary>
    public static string RecordName(ReturnPathMessageType type) => "return-path " + type switch
    {
        ReturnPathMessageType.Shut => "SHUT",
        ReturnPathMessageType.Pong => "PONG",
        ReturnPathMessageType.ReqPagesId => "REQ_PAGES_ID",
        ReturnPathMessageType.ReqPages => "REQ_PAGES",
        ReturnPathMessageType.RecvBitmap => "RECV_BITMAP",
        ReturnPathMessageType.ResumeAck => "RESUME_ACK",
        ReturnPathMessageType.SwitchoverAck => "SWITCHOVER_ACK",
        _ => $"message 0x{(ushort)type:x4}",
    };

    /// <summary>Writes the message. Allocates nothing.</summary>
    /// <param name="writer">The return path.</param>
    public void WriteTo(MigrationStreamWriter writer)
    {
        ArgumentNullException.ThrowIfNull(writer);
        int idLength = BlockId is null ? 0 : Encoding.UTF8.GetByteCount(BlockId);
        if (idLength > byte.MaxValue)
        {
            throw new InvalidOperationException($"RAM block id '{BlockId}' is longer than 255 bytes.");
        }

        int length = Type switch
        {
            ReturnPathMessageType.Shut or ReturnPathMessageType.Pong or ReturnPathMessageType.ResumeAck => 4,
            ReturnPathMessageType.ReqPages => 12,
            ReturnPathMessageType.ReqPagesId => 13 + idLength,
            ReturnPathMessageType.RecvBitmap => 1 + idLength,
            ReturnPathMessageType.SwitchoverAck => 0,
            _ => throw new InvalidOperationException($"Cannot write return-path message type {Type}."),
        };
        Span<byte> span = writer.GetSpan(4 + length);
        BinaryPrimitives.WriteUInt16BigEndian(span, (ushort)Type);
        BinaryPrimitives.WriteUInt16BigEndian(span[2..], (ushort)length);
        Span<byte> payload = span.Slice(4, length);
        switch (Type)
        {
            case ReturnPathMessageType.Shut or ReturnPathMessageType.Pong or ReturnPathMessageType.ResumeAck:
                BinaryPrimitives.WriteUInt32BigEndian(payload, Value);
                break;
            case ReturnPathMessageType.ReqPages or ReturnPathMessageType.ReqPagesId:
                BinaryPrimitives.WriteUInt64BigEndian(payload, Start);
                BinaryPrimitives.WriteUInt32BigEndian(payload[8..], Length);
                if (Type == ReturnPathMessageType.ReqPagesId)
                {
                    payload[12] = (byte)idLength;
                    Encoding.UTF8.GetBytes(BlockId!, payload[13..]);
                }

                break;
            case ReturnPathMessageType.RecvBitmap:
                payload[0] = (byte)idLength;
                Encoding.UTF8.GetBytes(BlockId!, payload[1..]);
                break;
        }

        writer.Advance(4 + length);
    }

    /// <summary>Reads one message, checking type and length as QEMU's source_return_path_thread does.</summary>
    /// <param name="reader">The return path.</param>
    public static async ValueTask<ReturnPathMessage> ReadFromAsync(MigrationStreamReader reader)
    {
        ArgumentNullException.ThrowIfNull(reader);
        reader.BeginRecord("return-path message");
        ushort raw = await reader.ReadBe16Async("message type").ConfigureAwait(false);
        var type = (ReturnPathMessageType)raw;
        reader.BeginRecord(RecordName(type));
        long lengthAt = reader.Position;
        ushort length = await reader.ReadBe16Async("payload length").ConfigureAwait(false);
        int expected = type switch
        {
            ReturnPathMessageType.Shut or ReturnPathMessageType.Pong or ReturnPathMessageType.ResumeAck => 4,
            ReturnPathMessageType.ReqPages => 12,
            ReturnPathMessageType.SwitchoverAck => 0,
            ReturnPathMessageType.ReqPagesId or ReturnPathMessageType.RecvBitmap => -1,
            _ => throw reader.Error($"unknown message type 0x{raw:x4} (length {length})"),
        };
        if ((expected >= 0 && length != expected) || length > StreamFormat.MaxReturnPathPayload)
        {
            throw reader.ErrorAt(lengthAt, $"payload length is {length}, expected {(expected >= 0 ? expected.ToString(System.Globalization.CultureInfo.InvariantCulture) : "at most 512")}");
        }

        switch (type)
        {
            case ReturnPathMessageType.Shut or ReturnPathMessageType.Pong or ReturnPathMessageType.ResumeAck:
                uint value = await reader.ReadBe32Async("value").ConfigureAwait(false);
                if (type == ReturnPathMessageType.ResumeAck && value != StreamFormat.ResumeAckValue)
                {
                    throw reader.ErrorAt(reader.Position - 4, $"RESUME_ACK value is {value}, expected {StreamFormat.ResumeAckValue}");
                }

                return new ReturnPathMessage(type, 0, 0, value, null);
            case ReturnPathMessageType.SwitchoverAck:
                return SwitchoverAck();
            case ReturnPathMessageType.ReqPages:
                ulong start = await reader.ReadBe64Async("start").ConfigureAwait(false);
                return ReqPages(start, await reader.ReadBe32Async("length").ConfigureAwait(false));
            case ReturnPathMessageType.ReqPagesId:
                if (length < 13)
                {
                    throw reader.ErrorAt(lengthAt, $"payload length {length} is too short for start, length and block id");
                }

                ulong idStart = await reader.ReadBe64Async("start").ConfigureAwait(false);
                uint idLength = await reader.ReadBe32Async("length").ConfigureAwait(false);
                string block = await reader.ReadReqPagesBlockIdAsync(length - 12, lengthAt).ConfigureAwait(false);
                return ReqPagesId(idStart, idLength, block);
            default:
                if (length < 1)
                {
                    throw reader.ErrorAt(lengthAt, "RECV_BITMAP carries no block id");
                }

                string bitmapBlock = await reader.ReadCountedStringAsync("RAM block id").ConfigureAwait(false);
                if (length != 1 + Encoding.UTF8.GetByteCount(bitmapBlock))
                {
                    throw reader.ErrorAt(lengthAt, $"payload length {length} does not match block id '{bitmapBlock}'");
                }

                return RecvBitmap(bitmapBlock);
        }
    }
}

/// <summary>
/// The received bitmap that follows a RECV_BITMAP return-path message (QEMU ramblock_recv_bitmap_send):
/// be64 size in bytes (a multiple of 8), the bitmap (little-endian bit order, bit n = target page n
/// received), be64 0x0123456789abcdef.
/// </summary>
/// <param name="Bitmap">The bitmap bytes; length a multiple of 8.</param>
public sealed record ReceivedBitmap(byte[] Bitmap)
{
    /// <summary>Writes size, bitmap and end marker.</summary>
    /// <param name="writer">The return path.</param>
    public void WriteTo(MigrationStreamWriter writer)
    {
        ArgumentNullException.ThrowIfNull(writer);
        if (Bitmap.Length % 8 != 0)
        {
            throw new InvalidOperationException($"A received bitmap is padded to 8 bytes; {Bitmap.Length} is not a multiple of 8.");
        }

        writer.WriteBe64((ulong)Bitmap.Length);
        writer.WriteBytes(Bitmap);
        writer.WriteBe64(StreamFormat.ReceivedBitmapEnding);
    }

    /// <summary>Reads size, bitmap and end marker, refusing sizes over the reader's limit before allocating.</summary>
    /// <param name="reader">The return path, right after the RECV_BITMAP message.</param>
    public static async ValueTask<ReceivedBitmap> ReadFromAsync(MigrationStreamReader reader)
    {
        ArgumentNullException.ThrowIfNull(reader);
        reader.BeginRecord("received bitmap");
        long at = reader.Position;
        ulong size = await reader.ReadBe64Async("bitmap size").ConfigureAwait(false);
        if (size % 8 != 0)
        {
            throw reader.ErrorAt(at, $"bitmap size {size} is not a multiple of 8");
        }

        byte[] bitmap = await reader.ReadBlobAsync(size, reader.Limits.MaxReceivedBitmapLength, at, "bitmap").ConfigureAwait(false);
        at = reader.Position;
        ulong end = await reader.ReadBe64Async("end marker").ConfigureAwait(false);
        if (end != StreamFormat.ReceivedBitmapEnding)
        {
            throw reader.ErrorAt(at, $"end marker is 0x{end:x16}, expected 0x{StreamFormat.ReceivedBitmapEnding:x16}: the bitmap is corrupt");
        }

        return new ReceivedBitmap(bitmap);
    }
}

public sealed partial class MigrationStreamReader
{
    // REQ_PAGES_ID names the block as u8 length + id; the fault thread asks for the same few blocks
    // over and over, so reuse the last string when the bytes match instead of allocating one per request.
    internal async ValueTask<string> ReadReqPagesBlockIdAsync(int remaining, long lengthAt)
    {
        int idLength = await ReadU8Async("block id length").ConfigureAwait(false);
        if (idLength + 1 != remaining)
        {
            throw ErrorAt(lengthAt, $"payload length does not match a block id of {idLength} bytes");
        }

        ReadOnlySequence<byte> bytes = await ReadBytesAsync(idLength, "block id").ConfigureAwait(false);
        if (_lastReqPagesBlockId is { } last && SameAscii(bytes, last))
        {
            return last;
        }

        _lastReqPagesBlockId = DecodeString(bytes);
        return _lastReqPagesBlockId;
    }

    private static bool SameAscii(ReadOnlySequence<byte> bytes, string text)
    {
        if (bytes.Length != text.Length || !bytes.IsSingleSegment)
        {
            return false;
        }

        ReadOnlySpan<byte> span = bytes.FirstSpan;
        for (int i = 0; i < span.Length; i++)
        {
            if (span[i] != text[i])
            {
                return false;
            }
        }

        return true;
    }
}
