using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using Modular.Core.Memory;
using Modular.Core.Migration.Stream;

namespace Modular.Core.Migration.Engine;

/// <summary>
/// The destination side of the "ram" section: checks the block list against this machine's RAM and
/// copies pages in (natively). Main incoming task in precopy; the listen thread in postcopy.
/// </summary>
internal sealed partial class RamLoader
{
    private readonly GuestRam _ram;
    private readonly MigrationStats _stats;
    private readonly byte[] _scratch = GC.AllocateUninitializedArray<byte>(RamBlock.TargetPageSize, pinned: true);
    private readonly byte[] _zero = GC.AllocateArray<byte>(RamBlock.TargetPageSize, pinned: true);
    private readonly byte[] _xbzrle = GC.AllocateUninitializedArray<byte>(RamBlock.TargetPageSize, pinned: true);
    private RamBlock? _lastBlock;
    private int _lastBlockIndex;
    private readonly ulong[] _loadedEnd;  // per block (as _ram.Blocks): the end of the highest page any record loaded
    private ulong _lastPageEnd;           // the end of the page the last record loaded, when it was a PAGE record; else 0
    private Postcopy.PostcopyRam? _postcopy;
    private Postcopy.HostPageAssembler? _hostPages;

    internal RamLoader(GuestRam ram, MigrationStats stats)
    {
        _ram = ram;
        _stats = stats;
        _loadedEnd = new ulong[ram.Blocks.Count];
    }

    /// <summary>
    /// The multifd channels (the multifd capability), or null: at each EOS this loader waits until
    /// every channel has placed the pages it got before its SYNC (QEMU's multifd_recv_sync_main).
    /// </summary>
    internal Multifd.MultifdReceiver? Multifd { get; set; }

    /// <summary>True once the MEM_SIZE record arrived and matched.</summary>
    internal bool SawMemSize { get; private set; }

    /// <summary>
    /// For a loader of a second channel (postcopy preempt), whose records carry no MEM_SIZE: the main
    /// stream's loader already checked the block list, so accept pages at once.
    /// </summary>
    internal void TrustBlockList() => SawMemSize = true;

    /// <summary>
    /// Called after each batch of records already received is loaded, on the thread that loaded it
    /// (postcopy's listen thread: it raises that thread's priority as soon as the loop runs on the
    /// transport's thread, rather than after the first section part, which can take 50 ms). Must be cheap.
    /// </summary>
    internal Action? AfterBatch { get; set; }

    /// <summary>
    /// Postcopy's RAM (set at POSTCOPY_ADVISE): every page goes through it, so its page maps see each
    /// arrival; null otherwise. Setting it gives this loader its own host-page assembler (huge pages
    /// after LISTEN are placed whole; each loader, i.e. each channel, assembles its own).
    /// </summary>
    internal Postcopy.PostcopyRam? Postcopy
    {
        get => _postcopy;
        set
        {
            _postcopy = value;
            _hostPages = value is null ? null : new Postcopy.HostPageAssembler(value);
        }
    }

    /// <summary>Postcopy recovery: forgets a huge page assembled only in part when the old connection broke off (see <see cref="Postcopy.HostPageAssembler.AbandonPartialHostPage"/>). The thread that reads this loader's stream.</summary>
    internal void AbandonPartialHostPage() => _hostPages?.AbandonPartialHostPage();

    /// <summary>Reads RAM records up to and including EOS.</summary>
    /// <param name="reader">The stream, at the first record of a ram section.</param>
    /// <param name="isStart">True for the SECTION_START (which carries MEM_SIZE).</param>
    internal async ValueTask LoadRecordsAsync(MigrationStreamReader reader, bool isStart)
    {
        while (true)
        {
            // Everything the last read delivered first, without an await per record; then one record
            // the slow way: EOS, MEM_SIZE, a record split across reads (this waits for the rest), or
            // a malformed one (the reader names what is wrong).
            LoadBufferedRecords(reader);
            _hostPages?.Flush(); // nothing waits in a postcopy run while this loader waits for data
            AfterBatch?.Invoke();
            long at = reader.Position;
            _lastPageEnd = 0; // a PAGE record read below sets it again
            RamRecordHeader header = await reader.ReadRamRecordHeaderAsync().ConfigureAwait(false);
            switch (header.Kind)
            {
                case RamRecordFlags.Eos:
                    if (Multifd is { } multifd)
                    {
                        await multifd.SyncAsync(reader.CancellationToken).ConfigureAwait(false);
                    }

                    return;
                case RamRecordFlags.MemSize:
                    if (!isStart)
                    {
                        throw reader.ErrorAt(at, "MEM_SIZE outside the section's START");
                    }

                    RamBlockList blocks = await RamBlockList.ReadFromAsync(reader, header.Offset, _postcopy is null ? null : HasPageSizeEntry).ConfigureAwait(false);
                    CheckBlocks(blocks, reader, at);
                    SawMemSize = true;
                    break;
                case RamRecordFlags.Page:
                {
                    RamBlock block = Resolve(header, reader, at);
                    ReadOnlySequence<byte> page = await reader.ReadRamPageAsync().ConfigureAwait(false);
                    LoadPage(block, header.Offset, page);
                    break;
                }

                case RamRecordFlags.Zero:
                {
                    RamBlock block = Resolve(header, reader, at);
                    await reader.ReadRamZeroFillAsync().ConfigureAwait(false);
                    LoadZeroPage(block, header.Offset);
                    break;
                }

                case RamRecordFlags.Xbzrle:
                {
                    RamBlock block = Resolve(header, reader, at);
                    ReadOnlySequence<byte> encoded = await reader.ReadRamXbzrleAsync().ConfigureAwait(false);
                    LoadXbzrlePage(block, header.Offset, encoded, reader, at);
                    break;
                }

                default:
                    throw reader.ErrorAt(at, $"unexpected RAM record {header.Kind}");
            }
        }
    }

    // The fast path: every whole PAGE and ZERO record the reader already holds, synchronously.
    // Compiled fully optimised at once (see RamSaver.SendPage), as is LoadPage.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void LoadBufferedRecords(MigrationStreamReader reader)
    {
        while (true)
        {
            if (_hostPages is null)
            {
                // Precopy: most pages come as runs of records that continue one block (postcopy
                // places whole host pages through its assembler, record by record).
                ReadOnlySpan<byte> run = reader.TryReadBufferedPageRun(out string blockId, out long runStart);
                if (!run.IsEmpty)
                {
                    LoadPageRun(run, blockId, runStart, reader);
                    continue;
                }
            }

            if (!reader.TryReadBufferedRamRecord(out RamRecordHeader header, out ReadOnlySequence<byte> page))
            {
                if (_lastPageEnd != 0 && Direct is not null && ReceivePagesDirect(reader))
                {
                    continue; // what the direct receive could not use came back through the pipe
                }

                return;
            }

            RamBlock block = Resolve(header, reader, reader.RecordStart);
            if (header.Kind == RamRecordFlags.Page)
            {
                LoadPage(block, header.Offset, page);
            }
            else
            {
                LoadZeroPage(block, header.Offset);
            }
        }
    }

    // A run of PAGE records continuing one block (MigrationStreamReader.TryReadBufferedPageRun):
    // each page copied natively into guest RAM, its offset checked as Resolve checks a record's.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void LoadPageRun(ReadOnlySpan<byte> run, string blockId, long runStart, MigrationStreamReader reader)
    {
        RamBlock block = Resolve(new RamRecordHeader(RamRecordFlags.Page | RamRecordFlags.Continue, 0, blockId), reader, runStart);
        int pages = 0;
        for (int at = 0; at < run.Length; at += MigrationStreamReader.ContinuedPageRecordLength)
        {
            ulong offset = BinaryPrimitives.ReadUInt64BigEndian(run[at..]) & ~RamRecordHeader.FlagMask;
            if (!PageFits(block, offset))
            {
                _stats.AddNormal(pages);
                throw PageOutsideBlock(reader, runStart + at, block, offset);
            }

            block.CopyIn(offset, run.Slice(at + 8, RamBlock.TargetPageSize));
            NotePageLoaded(offset);
            pages++;
        }

        _stats.AddNormal(pages);
    }

    // Copies a page from the pipe's buffer into guest RAM natively; a page split across buffer
    // segments is copied in pieces (precopy) or gathered first (postcopy places whole pages).
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private void LoadPage(RamBlock block, ulong offset, ReadOnlySequence<byte> page)
    {
        if (_hostPages is { } postcopy)
        {
            ReadOnlySpan<byte> bytes;
            if (page.IsSingleSegment)
            {
                bytes = page.FirstSpan;
            }
            else
            {
                page.CopyTo(_scratch);
                bytes = _scratch;
            }

            postcopy.Add(block, offset, bytes, isZero: false);
        }
        else if (page.IsSingleSegment)
        {
            block.CopyIn(offset, page.FirstSpan);
        }
        else
        {
            ulong at = offset;
            foreach (ReadOnlyMemory<byte> piece in page)
            {
                block.CopyIn(at, piece.Span);
                at += (ulong)piece.Length;
            }
        }

        NotePageLoaded(offset);
        _stats.AddNormal();
    }

    // The page as it is here, changed by the difference (QEMU's load_xbzrle), copied natively both ways.
    private void LoadXbzrlePage(RamBlock block, ulong offset, ReadOnlySequence<byte> encoded, MigrationStreamReader reader, long at)
    {
        if (_hostPages is not null)
        {
            throw reader.ErrorAt(at, "an XBZRLE page in a postcopy migration; Modular's source does not send them with postcopy-ram");
        }

        ReadOnlySpan<byte> bytes;
        if (encoded.IsSingleSegment)
        {
            bytes = encoded.FirstSpan;
        }
        else
        {
            encoded.CopyTo(_xbzrle);
            bytes = _xbzrle.AsSpan(0, (int)encoded.Length);
        }

        block.CopyOut(offset, _scratch);
        if (Xbzrle.Decode(bytes, _scratch) < 0)
        {
            throw reader.ErrorAt(at, $"XBZRLE page at 0x{offset:x} of RAM block '{block.Name}' does not decode (a run past the page or the data)");
        }

        block.CopyIn(offset, _scratch);
        NoteOtherLoaded(offset);
        _stats.AddNormal();
    }

    private void LoadZeroPage(RamBlock block, ulong offset)
    {
        if (_hostPages is { } postcopy)
        {
            postcopy.Add(block, offset, _zero, isZero: true);
        }
        else if (!block.IsZeroPage(offset))
        {
            block.CopyIn(offset, _zero);
        }

        NoteOtherLoaded(offset);
        _stats.AddDuplicate();
    }

    // A target page at offset lies wholly inside the block (no overflow for any offset).
    private static bool PageFits(RamBlock block, ulong offset) => offset <= block.Size - RamBlock.TargetPageSize;

    private static MigrationStreamException PageOutsideBlock(MigrationStreamReader reader, long at, RamBlock block, ulong offset) =>
        reader.ErrorAt(at, $"page offset 0x{offset:x} lies outside RAM block '{block.Name}' (0x{block.Size:x} bytes)");

    private RamBlock Resolve(RamRecordHeader header, MigrationStreamReader reader, long at)
    {
        if (!SawMemSize)
        {
            throw reader.ErrorAt(at, "a page arrived before the MEM_SIZE record");
        }

        // No lambda here: one capturing the parameter would allocate its closure on every call, that
        // is every page (measured: 9.6 MB of garbage per GiB, and a gen1 GC in every postcopy).
        RamBlock? block = _lastBlock is { } last && ReferenceEquals(last.Name, header.BlockId) || _lastBlock?.Name == header.BlockId
            ? _lastBlock
            : FindBlock(header.BlockId);
        if (block is null)
        {
            throw reader.ErrorAt(at, $"RAM block '{header.BlockId}' does not exist on this machine (it has {string.Join(", ", _ram.Blocks.Select(b => b.Name))})");
        }

        if (!PageFits(block, header.Offset))
        {
            throw PageOutsideBlock(reader, at, block, header.Offset);
        }

        if (!ReferenceEquals(block, _lastBlock))
        {
            _lastBlock = block;
            _lastBlockIndex = IndexOf(block);
        }

        return block;
    }

    /// <summary>
    /// Whether the MEM_SIZE entry of block <paramref name="id"/> carries a page size: with postcopy
    /// advised, for a block whose host page is not the target page (QEMU's parse_ramblock).
    /// </summary>
    private bool HasPageSizeEntry(string id) =>
        FindBlock(id) is { } block && block.HostPageSize != RamBlock.TargetPageSize;

    // Where the last record's page ended, and how far the block's highest loaded page reaches
    // (ReceivePagesDirect guesses only pages past it). Both after Resolve named the block.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void NotePageLoaded(ulong offset)
    {
        ulong end = offset + RamBlock.TargetPageSize;
        _lastPageEnd = end;
        ref ulong loaded = ref _loadedEnd[_lastBlockIndex];
        if (end > loaded)
        {
            loaded = end;
        }
    }

    private void NoteOtherLoaded(ulong offset)
    {
        NotePageLoaded(offset);
        _lastPageEnd = 0;
    }

    private int IndexOf(RamBlock block)
    {
        for (int i = 0; i < _ram.Blocks.Count; i++)
        {
            if (ReferenceEquals(_ram.Blocks[i], block))
            {
                return i;
            }
        }

        throw new InvalidOperationException($"RAM block '{block.Name}' is not one of this machine's.");
    }

    /// <summary>The block named <paramref name="id"/>, or null.</summary>
    private RamBlock? FindBlock(string? id)
    {
        foreach (RamBlock block in _ram.Blocks)
        {
            if (block.Name == id)
            {
                return block;
            }
        }

        return null;
    }

    private void CheckBlocks(RamBlockList blocks, MigrationStreamReader reader, long at)
    {
        foreach (RamBlockEntry entry in blocks.Blocks)
        {
            RamBlock? block = FindBlock(entry.Id);
            if (block is null)
            {
                throw reader.ErrorAt(at, $"RAM block '{entry.Id}' does not exist on this machine (it has {string.Join(", ", _ram.Blocks.Select(b => b.Name))}); give both sides the same machine");
            }

            if (block.Size != entry.Length)
            {
                throw reader.ErrorAt(at, $"RAM block '{entry.Id}' is 0x{entry.Length:x} bytes on the source but 0x{block.Size:x} here; start the destination with the same memory size ({entry.Length >> 20} MiB)");
            }

            if (entry.PageSize is ulong pageSize && pageSize != block.HostPageSize)
            {
                throw reader.ErrorAt(at, $"RAM block '{entry.Id}' uses 0x{pageSize:x}-byte host pages on the source but 0x{block.HostPageSize:x} here; back guest RAM the same way on both sides (machine.hugepages)");
            }
        }
    }
}
