using System.Buffers.Binary;
using System.Text;

namespace Modular.Core.Migration.Stream;

/// <summary>
/// QEMU's multifd channel format (migration/multifd.h, version 1, as QEMU 7.2 to 8.2 write it): each
/// channel starts with an initial message, then carries packets, each a fixed header with up to
/// <see cref="PagesPerPacket"/> page offsets of one RAM block, followed by those pages' bytes.
/// All numbers big-endian. Zero pages do not travel here: they stay ZERO records on the main stream.
/// </summary>
/// <remarks>
/// <code>
/// initial message (64 bytes)             packet header (320 + 8 * pages_alloc bytes)
///   be32 magic 0x11223344                  be32 magic, be32 version 1
///   be32 version 1                         be32 flags (bit 0: SYNC)
///   u8[16] uuid (Modular: zero)            be32 pages_alloc (offsets that follow; 128 for 4 KiB pages)
///   u8 channel id (0-based)                be32 normal_pages (offsets in use)
///   u8[7], be64[4] unused (zero)           be32 next_packet_size (0), be64 packet_num
///                                          be64[4] unused (QEMU 9.0: be32 zero_pages first;
///                                          refused unless 0), char[256] ramblock (NUL-terminated)
///                                          be64 offset[pages_alloc]
///                                        then normal_pages * 4096 bytes of page data
/// </code>
/// A packet with SYNC ends the channel's share of one RAM section part: its receiver waits until the
/// main stream's loader reaches that part's EOS (QEMU's multifd_recv_sync_main) before it goes on.
/// </remarks>
internal static class MultifdPackets
{
    internal const uint Magic = 0x11223344;
    internal const uint Version = 1;
    internal const uint FlagSync = 1;
    internal const int InitLength = 64;
    internal const int PagesPerPacket = 128; // QEMU: MULTIFD_PACKET_SIZE (512 KiB) / target page size
    internal const int FixedHeaderLength = 4 * 6 + 8 + 8 * 4 + RamBlockNameLength;
    internal const int HeaderLength = FixedHeaderLength + 8 * PagesPerPacket;
    private const int RamBlockNameLength = 256;

    /// <summary>Writes the initial message of channel <paramref name="id"/> (0-based) into <paramref name="destination"/> (at least <see cref="InitLength"/> bytes).</summary>
    internal static void WriteInit(Span<byte> destination, byte id)
    {
        destination[..InitLength].Clear();
        BinaryPrimitives.WriteUInt32BigEndian(destination, Magic);
        BinaryPrimitives.WriteUInt32BigEndian(destination[4..], Version);
        destination[24] = id;
    }

    /// <summary>Checks an initial message; returns the channel id it names.</summary>
    /// <param name="message">The <see cref="InitLength"/> bytes received.</param>
    /// <param name="channel">Names the channel in errors.</param>
    internal static byte ReadInit(ReadOnlySpan<byte> message, string channel)
    {
        uint magic = BinaryPrimitives.ReadUInt32BigEndian(message);
        if (magic != Magic)
        {
            throw new MigrationStreamException(0, "multifd initial message", $"{channel}: magic 0x{magic:x8}, expected 0x{Magic:x8}; the peer is not sending multifd on this channel");
        }

        uint version = BinaryPrimitives.ReadUInt32BigEndian(message[4..]);
        if (version != Version)
        {
            throw new MigrationStreamException(4, "multifd initial message", $"{channel}: version {version}, only version {Version} is supported");
        }

        return message[24];
    }

    /// <summary>Writes a packet header (<see cref="HeaderLength"/> bytes) for <paramref name="offsets"/> of <paramref name="block"/>.</summary>
    internal static void WriteHeader(Span<byte> destination, uint flags, ulong packetNumber, string block, ReadOnlySpan<ulong> offsets)
    {
        if (offsets.Length > PagesPerPacket)
        {
            throw new ArgumentOutOfRangeException(nameof(offsets), offsets.Length, $"at most {PagesPerPacket} pages per packet");
        }

        Span<byte> header = destination[..HeaderLength];
        header.Clear();
        BinaryPrimitives.WriteUInt32BigEndian(header, Magic);
        BinaryPrimitives.WriteUInt32BigEndian(header[4..], Version);
        BinaryPrimitives.WriteUInt32BigEndian(header[8..], flags);
        BinaryPrimitives.WriteUInt32BigEndian(header[12..], PagesPerPacket);
        BinaryPrimitives.WriteUInt32BigEndian(header[16..], (uint)offsets.Length);
        BinaryPrimitives.WriteUInt64BigEndian(header[24..], packetNumber);
        _ = Encoding.UTF8.GetBytes(block, header.Slice(64, RamBlockNameLength - 1));
        Span<byte> offsetBytes = header[FixedHeaderLength..];
        for (int i = 0; i < offsets.Length; i++)
        {
            BinaryPrimitives.WriteUInt64BigEndian(offsetBytes[(i * 8)..], offsets[i]);
        }
    }

    /// <summary>A packet header as read; <see cref="Offsets"/> is filled up to <see cref="NormalPages"/>.</summary>
    internal readonly record struct Header(uint Flags, ulong PacketNumber, string Block, int NormalPages)
    {
        internal bool IsSync => (Flags & FlagSync) != 0;
    }

    /// <summary>Reads and checks a packet header; the page offsets go into <paramref name="offsets"/> (at least <see cref="PagesPerPacket"/> long).</summary>
    /// <param name="header">The <see cref="HeaderLength"/> bytes received.</param>
    /// <param name="offsets">Receives the offsets of the normal pages.</param>
    /// <param name="at">The header's byte offset in the channel (for errors).</param>
    /// <param name="channel">Names the channel in errors.</param>
    internal static Header ReadHeader(ReadOnlySpan<byte> header, Span<ulong> offsets, long at, string channel)
    {
        uint magic = BinaryPrimitives.ReadUInt32BigEndian(header);
        if (magic != Magic)
        {
            throw Error(at, channel, $"magic 0x{magic:x8}, expected 0x{Magic:x8}");
        }

        uint version = BinaryPrimitives.ReadUInt32BigEndian(header[4..]);
        if (version != Version)
        {
            throw Error(at + 4, channel, $"version {version}, only version {Version} is supported");
        }

        uint flags = BinaryPrimitives.ReadUInt32BigEndian(header[8..]);
        if ((flags & ~FlagSync) != 0)
        {
            throw Error(at + 8, channel, $"flags 0x{flags:x}: compressed packets (zlib, zstd) are not supported; turn multifd-compression off on the source");
        }

        uint pagesAlloc = BinaryPrimitives.ReadUInt32BigEndian(header[12..]);
        if (pagesAlloc != PagesPerPacket)
        {
            throw Error(at + 12, channel, $"{pagesAlloc} page offsets per packet; this destination expects {PagesPerPacket} (4 KiB target pages)");
        }

        uint normal = BinaryPrimitives.ReadUInt32BigEndian(header[16..]);
        if (normal > pagesAlloc)
        {
            throw Error(at + 16, channel, $"{normal} pages in a packet of at most {pagesAlloc}");
        }

        ulong number = BinaryPrimitives.ReadUInt64BigEndian(header[24..]);
        uint zeroPages = BinaryPrimitives.ReadUInt32BigEndian(header[32..]);
        if (zeroPages != 0)
        {
            // QEMU 9.0 put zero_pages in the first unused word, their offsets after the normal ones.
            throw Error(at + 32, channel, $"{zeroPages} zero pages inside a packet (QEMU 9.0's multifd-zero-page-detection=multifd); this destination takes zero pages on the main stream: set multifd-zero-page-detection to legacy on the source");
        }

        ReadOnlySpan<byte> name = header.Slice(64, RamBlockNameLength);
        int end = name.IndexOf((byte)0);
        if (end < 0)
        {
            throw Error(at + 64, channel, "the RAM block name is not NUL-terminated");
        }

        string block = Encoding.UTF8.GetString(name[..end]);
        ReadOnlySpan<byte> offsetBytes = header[FixedHeaderLength..];
        for (int i = 0; i < normal; i++)
        {
            offsets[i] = BinaryPrimitives.ReadUInt64BigEndian(offsetBytes[(i * 8)..]);
        }

        return new Header(flags, number, block, (int)normal);
    }

    /// <summary>An error in the packet at <paramref name="at"/> of <paramref name="channel"/>.</summary>
    internal static MigrationStreamException Error(long at, string channel, string detail) =>
        new(at, "multifd packet", $"{channel}: {detail}");
}
