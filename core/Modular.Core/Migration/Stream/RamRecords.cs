using System.Buffers;
using System.Runtime.CompilerServices;

namespace Modular.Core.Migration.Stream;

/// <summary>
/// The start of one record in the "ram" section: the be64 word <c>offset | flags</c> and, for PAGE
/// and ZERO records without CONTINUE, the counted id string of the RAM block. What follows depends
/// on the flags: ZERO a fill byte, PAGE <see cref="StreamFormat.TargetPageSize"/> bytes, MEM_SIZE the
/// block list (<see cref="RamBlockList"/>), EOS nothing.
/// </summary>
/// <param name="Flags">The flags, CONTINUE included as read.</param>
/// <param name="Offset">Page-aligned offset in the block, or with MEM_SIZE the total RAM size.</param>
/// <param name="BlockId">The block the record is about (from the id string or the previous record); null for MEM_SIZE and EOS.</param>
public readonly record struct RamRecordHeader(RamRecordFlags Flags, ulong Offset, string? BlockId)
{
    /// <summary>The flag bits: everything below the target page size.</summary>
    public const ulong FlagMask = StreamFormat.TargetPageSize - 1;

    /// <summary>The record kind without CONTINUE.</summary>
    public RamRecordFlags Kind => Flags & ~RamRecordFlags.Continue;
}

/// <summary>One entry of the MEM_SIZE block list: counted id, be64 used length, and (only when postcopy is
/// advised and the block's page size differs from the host page size) be64 page size.</summary>
/// <param name="Id">The RAM block id, e.g. <c>pc.ram</c>.</param>
/// <param name="Length">Used length in bytes.</param>
/// <param name="PageSize">Written only when not null (QEMU: postcopy-ram and a huge-page block).</param>
public readonly record struct RamBlockEntry(string Id, ulong Length, ulong? PageSize = null);

/// <summary>
/// The MEM_SIZE record that opens the RAM section (QEMU ram_save_setup): be64 (total | MEM_SIZE), then
/// per block a <see cref="RamBlockEntry"/>; the reader stops when the lengths add up to the total.
/// QEMU then writes EOS, as does <see cref="WriteTo"/>'s caller.
/// </summary>
/// <param name="Blocks">The RAM blocks.</param>
public sealed record RamBlockList(IReadOnlyList<RamBlockEntry> Blocks)
{
    /// <summary>The sum of the block lengths.</summary>
    public ulong TotalLength => Blocks.Aggregate(0UL, (sum, b) => sum + b.Length);

    /// <summary>Writes the MEM_SIZE word and the block list.</summary>
    /// <param name="writer">The stream, inside the RAM section's START.</param>
    public void WriteTo(MigrationStreamWriter writer)
    {
        ArgumentNullException.ThrowIfNull(writer);
        ulong total = TotalLength;
        if ((total & RamRecordHeader.FlagMask) != 0)
        {
            throw new InvalidOperationException($"Total RAM size 0x{total:x} is not page aligned.");
        }

        writer.WriteBe64(total | (ulong)RamRecordFlags.MemSize);
        foreach (RamBlockEntry block in Blocks)
        {
            writer.WriteCountedString(block.Id);
            writer.WriteBe64(block.Length);
            if (block.PageSize is ulong pageSize)
            {
                writer.WriteBe64(pageSize);
            }
        }
    }

    /// <summary>Reads the block list after a MEM_SIZE header.</summary>
    /// <param name="reader">The stream, just after the MEM_SIZE word.</param>
    /// <param name="totalLength">The total from the MEM_SIZE word.</param>
    /// <param name="hasPageSize">Whether the entry of a block carries a page size (depends on what was negotiated
    /// and on the destination's block, as in QEMU's parse_ramblock); null: never.</param>
    public static async ValueTask<RamBlockList> ReadFromAsync(MigrationStreamReader reader, ulong totalLength, Func<string, bool>? hasPageSize = null)
    {
        ArgumentNullException.ThrowIfNull(reader);
        var blocks = new List<RamBlockEntry>();
        ulong remaining = totalLength;
        while (remaining > 0)
        {
            long at = reader.Position;
            string id = await reader.ReadCountedStringAsync("RAM block id").ConfigureAwait(false);
            ulong length = await reader.ReadBe64Async("RAM block length").ConfigureAwait(false);
            if (length > remaining)
            {
                throw reader.ErrorAt(at, $"RAM block '{id}' of 0x{length:x} bytes exceeds the 0x{remaining:x} bytes left of the announced total 0x{totalLength:x}");
            }

            ulong? pageSize = hasPageSize?.Invoke(id) == true ? await reader.ReadBe64Async("RAM block page size").ConfigureAwait(false) : null;
            blocks.Add(new RamBlockEntry(id, length, pageSize));
            remaining -= length;
            if (blocks.Count > 4096)
            {
                throw reader.ErrorAt(at, "more than 4096 RAM blocks");
            }
        }

        return new RamBlockList(blocks);
    }
}

public sealed partial class MigrationStreamReader
{
    private const RamRecordFlags SupportedRamFlags =
        RamRecordFlags.Zero | RamRecordFlags.MemSize | RamRecordFlags.Page | RamRecordFlags.Eos | RamRecordFlags.Continue | RamRecordFlags.Xbzrle;

    /// <summary>
    /// Forgets the RAM block of the previous record (a CONTINUE now is an error). Not called at section
    /// headers: like QEMU's destination, a reader remembers the last block named on its channel for the
    /// whole stream, and QEMU's source relies on it (a PART may begin with CONTINUE).
    /// </summary>
    public void ResetRamBlock() => _lastRamBlockId = null;

    /// <summary>
    /// Reads the next RAM record header: the be64 word, and the block id unless CONTINUE (or MEM_SIZE/EOS).
    /// Refuses unknown and unsupported flags (XBZRLE, compression, multifd, RDMA hook) with the flag named.
    /// </summary>
    public ValueTask<RamRecordHeader> ReadRamRecordHeaderAsync()
    {
        BeginRecord("ram record");
        if (_buffer.Length >= 8)
        {
            ulong word = TakeBe64();
            var flags = (RamRecordFlags)(word & RamRecordHeader.FlagMask);
            ulong offset = word & ~RamRecordHeader.FlagMask;
            if ((flags & RamRecordFlags.Continue) != 0 && (flags & ~RamRecordFlags.Continue) is RamRecordFlags.Page or RamRecordFlags.Zero or RamRecordFlags.Xbzrle && _lastRamBlockId is { } last)
            {
                return new(new RamRecordHeader(flags, offset, last));
            }

            return FinishRamHeader(flags, offset);
        }

        return Slow();

        [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
        async ValueTask<RamRecordHeader> Slow()
        {
            ulong word = await ReadBe64Async("offset and flags").ConfigureAwait(false);
            return await FinishRamHeader((RamRecordFlags)(word & RamRecordHeader.FlagMask), word & ~RamRecordHeader.FlagMask).ConfigureAwait(false);
        }
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<RamRecordHeader> FinishRamHeader(RamRecordFlags flags, ulong offset)
    {
        RamRecordFlags unsupported = flags & ~SupportedRamFlags;
        if (unsupported != 0)
        {
            throw Error($"flags 0x{(ulong)flags:x} include unsupported 0x{(ulong)unsupported:x} ({unsupported}); Modular reads only ZERO, MEM_SIZE, PAGE, XBZRLE, EOS and CONTINUE (disable compression and multifd's main-stream flags on the source)");
        }

        RamRecordFlags kind = flags & ~RamRecordFlags.Continue;
        switch (kind)
        {
            case RamRecordFlags.MemSize or RamRecordFlags.Eos:
                if ((flags & RamRecordFlags.Continue) != 0)
                {
                    throw Error($"CONTINUE is meaningless with {kind}");
                }

                return new RamRecordHeader(flags, offset, null);
            case RamRecordFlags.Page or RamRecordFlags.Zero or RamRecordFlags.Xbzrle:
                if ((flags & RamRecordFlags.Continue) != 0)
                {
                    return new RamRecordHeader(flags, offset, _lastRamBlockId ?? throw Error("CONTINUE but no RAM block was named before on this stream"));
                }

                _lastRamBlockId = await ReadRamBlockIdAsync().ConfigureAwait(false);
                return new RamRecordHeader(flags, offset, _lastRamBlockId);
            default:
                throw Error($"flags 0x{(ulong)flags:x} are not one record kind (exactly one of ZERO, MEM_SIZE, PAGE, XBZRLE, EOS expected)");
        }
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<string> ReadRamBlockIdAsync()
    {
        int length = await ReadU8Async("RAM block id length").ConfigureAwait(false);
        ReadOnlySequence<byte> bytes = await ReadBytesAsync(length, "RAM block id").ConfigureAwait(false);
        return _lastRamBlockId is { } last && SameAscii(bytes, last) ? last : DecodeString(bytes);
    }

    /// <summary>
    /// Reads the page of a PAGE record as a slice of the pipe's buffer, valid until the next call on
    /// this reader: copy it into guest RAM (native copy) before reading on. No allocation.
    /// </summary>
    public ValueTask<ReadOnlySequence<byte>> ReadRamPageAsync() => ReadBytesAsync(StreamFormat.TargetPageSize, "page data");

    /// <summary>
    /// Reads the body of an XBZRLE record: the encoding flag (must be <see cref="Xbzrle.EncodingFlag"/>),
    /// the be16 length (at most one page) and the encoding, as a slice of the pipe's buffer valid
    /// until the next call on this reader (QEMU's load_xbzrle checks).
    /// </summary>
    public async ValueTask<ReadOnlySequence<byte>> ReadRamXbzrleAsync()
    {
        long at = Position;
        byte encoding = await ReadU8Async("XBZRLE encoding flag").ConfigureAwait(false);
        if (encoding != Xbzrle.EncodingFlag)
        {
            throw ErrorAt(at, $"XBZRLE page with encoding flag 0x{encoding:x2}, not 0x{Xbzrle.EncodingFlag:x2} (wrong compression)");
        }

        at = Position;
        ushort length = await ReadBe16Async("XBZRLE length").ConfigureAwait(false);
        if (length > StreamFormat.TargetPageSize)
        {
            throw ErrorAt(at, $"XBZRLE page of {length} bytes, more than a page ({StreamFormat.TargetPageSize})");
        }

        return await ReadBytesAsync(length, "XBZRLE data").ConfigureAwait(false);
    }

    /// <summary>Reads the fill byte of a ZERO record and checks it is 0, as QEMU's loader does.</summary>
    public async ValueTask ReadRamZeroFillAsync()
    {
        long at = Position;
        byte fill = await ReadU8Async("zero page fill byte").ConfigureAwait(false);
        if (fill != 0)
        {
            throw ErrorAt(at, $"ZERO page with fill byte 0x{fill:x2}; only 0 is valid");
        }
    }
}
