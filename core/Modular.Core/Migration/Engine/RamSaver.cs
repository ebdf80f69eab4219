using System.IO.Pipelines;
using System.Runtime.CompilerServices;
using Modular.Core.Memory;
using Modular.Core.Migration.Stream;

namespace Modular.Core.Migration.Engine;

/// <summary>
/// The source side of the "ram" section: the migration bitmap per RAM block, the scan cursor, and
/// sending pages (zero pages as ZERO records). Migration task only (not thread-safe).
/// </summary>
internal sealed class RamSaver : IDisposable
{
    internal const string SectionName = "ram";
    internal const uint SectionVersion = StreamFormat.RamSectionVersion;

    private readonly GuestRam _ram;
    private readonly MigrationStats _stats;
    private readonly DirtyBitmap[] _dirty;
    private static readonly RamPageCopy<RamBlock> CopyPage = static (block, offset, destination) => block.CopyOut(offset, destination);
    private readonly RamBlock.MappingLease[] _leases;
    private int _cursorBlock;
    private long _cursorPage;

    internal RamSaver(GuestRam ram, MigrationStats stats)
    {
        _ram = ram;
        _stats = stats;
        _dirty = ram.Blocks.Select(b => new DirtyBitmap(b.PageCount)).ToArray();
        SentMap = ram.Blocks.Select(b => new DirtyBitmap(b.PageCount)).ToArray();
        _leases = ram.Blocks.Select(b => b.KeepMapped()).ToArray();
    }

    /// <summary>Lets the RAM mappings go (pages written by reference have all been flushed by then).</summary>
    public void Dispose()
    {
        foreach (RamBlock.MappingLease lease in _leases)
        {
            lease.Dispose();
        }
    }

    /// <summary>
    /// The multifd channels (the multifd capability), or null: normal pages then go to them instead of
    /// PAGE records, and every RAM section part must end with <see cref="SyncMultifd"/> before its EOS.
    /// </summary>
    internal Multifd.MultifdSender? Multifd { get; set; }

    /// <summary>The XBZRLE cache (the xbzrle capability, precopy without multifd), or null.</summary>
    internal XbzrleCache? Xbzrle { get; set; }

    /// <summary>True for the last pass, with the guest stopped for good (QEMU's last_stage).</summary>
    internal bool FinalStage { get; set; }

    /// <summary>Before a RAM section part's EOS: the multifd channels send what is queued and a SYNC each (nothing without multifd).</summary>
    internal void SyncMultifd() => Multifd?.Sync();

    /// <summary>Pages sent at least once, per block (the seed's "sent map").</summary>
    internal DirtyBitmap[] SentMap { get; }

    /// <summary>The migration bitmap of each block (pages that need sending).</summary>
    internal IReadOnlyList<DirtyBitmap> Dirty => _dirty;

    /// <summary>Pages still marked dirty.</summary>
    internal long DirtyPages => _dirty.Sum(b => b.Count());

    /// <summary>
    /// The MEM_SIZE record's block list. With postcopy-ram, a block whose host page is not the target
    /// page also carries its page size (QEMU's ram_save_setup), which the destination checks.
    /// </summary>
    /// <param name="postcopyRam">True when the postcopy-ram capability is on.</param>
    internal RamBlockList BlockList(bool postcopyRam) =>
        new(_ram.Blocks.Select(b => new RamBlockEntry(b.Name, b.Size, postcopyRam && b.HostPageSize != RamBlock.TargetPageSize ? b.HostPageSize : null)).ToList());

    /// <summary>
    /// Postcopy recovery (QEMU's ram_dirty_bitmap_reload): the destination's received bitmap of block
    /// <paramref name="blockIndex"/> replaces its migration bitmap, complemented, so every page the
    /// destination lacks (never sent, or lost with the failed connection) is sent again; the scan
    /// starts over. Migration task, while no page is being sent.
    /// </summary>
    /// <param name="blockIndex">The block.</param>
    /// <param name="received">QEMU's layout: bit n (little-endian bit order) set when target page n arrived; at least one bit per page.</param>
    /// <returns>The pages the destination still lacks in this block.</returns>
    /// <exception cref="InvalidOperationException">The bitmap is shorter than the block.</exception>
    internal long ResendNotReceived(int blockIndex, ReadOnlySpan<byte> received)
    {
        DirtyBitmap dirty = _dirty[blockIndex];
        long needed = (dirty.Length + 7) / 8;
        if (received.Length < needed)
        {
            throw new InvalidOperationException($"the destination's received bitmap of RAM block '{_ram.Blocks[blockIndex].Name}' has {received.Length} bytes; its {dirty.Length} pages need {needed}");
        }

        Span<ulong> words = dirty.Words;
        Span<byte> word = stackalloc byte[8];
        for (int w = 0; w < words.Length; w++)
        {
            word.Clear();
            ReadOnlySpan<byte> from = received.Slice(w * 8, (int)Math.Min(8, needed - (w * 8L)));
            from.CopyTo(word);
            ulong missing = ~System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(word);
            long bits = Math.Min(64, dirty.Length - (w * 64L));
            words[w] = bits == 64 ? missing : missing & ((1UL << (int)bits) - 1);
        }

        _cursorBlock = 0;
        _cursorPage = 0;
        long lacking = dirty.Count();
        _stats.SetRemaining(DirtyPages * RamBlock.TargetPageSize);
        return lacking;
    }

    /// <summary>Bulk stage: every page needs sending, and KVM's log (which also holds boot-time writes) is emptied.</summary>
    internal void MarkAllDirty()
    {
        for (int i = 0; i < _dirty.Length; i++)
        {
            _dirty[i].SetAll();
            _ram.SyncDirtyBitmap(_ram.Blocks[i], _dirty[i]);
        }

        _stats.SetTotalBytes((long)_ram.Size);
        _stats.SetRemaining((long)_ram.Size);
    }

    /// <summary>Merges the guest's (KVM) and the VMM's writes into the migration bitmap; returns the pages now dirty.</summary>
    /// <param name="final">True for the last sync, with the vCPUs stopped for good (see <see cref="GuestRam.SyncDirtyBitmap"/>: no re-protection).</param>
    internal long Sync(bool final = false)
    {
        for (int i = 0; i < _dirty.Length; i++)
        {
            _ram.SyncDirtyBitmap(_ram.Blocks[i], _dirty[i], rearm: !final);
        }

        _stats.AddDirtySync();
        long pages = DirtyPages;
        _stats.SetRemaining(pages * RamBlock.TargetPageSize);
        return pages;
    }

    /// <summary>
    /// Sends dirty pages, flushing every 256 pages so the transport's backpressure applies, until none
    /// is left or <paramref name="budget"/> has passed. Returns true when the bitmap is empty.
    /// </summary>
    internal async ValueTask<bool> SendDirtyAsync(MigrationStreamWriter writer, PipeWriter output, TimeSpan budget, Func<long, ValueTask> afterFlush, CancellationToken cancellationToken)
    {
        long started = Environment.TickCount64;
        int sinceFlush = 0;
        while (true)
        {
            if (!TryNextDirty(out int blockIndex, out long page))
            {
                await FlushAsync(writer, output, afterFlush, cancellationToken).ConfigureAwait(false);
                return true;
            }

            SendPage(writer, blockIndex, page);
            if (++sinceFlush == 256)
            {
                sinceFlush = 0;
                await FlushAsync(writer, output, afterFlush, cancellationToken).ConfigureAwait(false);
                if (Environment.TickCount64 - started >= budget.TotalMilliseconds)
                {
                    return false;
                }
            }
        }
    }

    /// <summary>
    /// Sends about <paramref name="maxPages"/> target pages from the scan cursor (postcopy background
    /// pages; the caller flushes), whole host pages at a time (<see cref="SendHostPage"/>): at least one
    /// host page. Returns false when the bitmap turned out empty.
    /// </summary>
    internal bool SendDirtyBatch(MigrationStreamWriter writer, int maxPages)
    {
        for (int sent = 0; sent < maxPages;)
        {
            if (!TryNextDirty(out int blockIndex, out long page))
            {
                return false;
            }

            long next = SendHostPage(writer, blockIndex, page);
            sent += (int)(next - page);
        }

        return true;
    }

    /// <summary>Sends one page now (also used for requested pages): a ZERO record when all zero, else a PAGE record.</summary>
    /// <remarks>
    /// Runs once per page, so it is compiled fully optimised at once: with tiering it would run as
    /// unoptimised tier-0 code through much of a migration (call counting waits while other new methods
    /// are being compiled, which a migration's start is full of), then be compiled a second time.
    /// </remarks>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal void SendPage(MigrationStreamWriter writer, int blockIndex, long page)
    {
        _dirty[blockIndex].TestAndClear(page);
        WritePage(writer, blockIndex, page);
    }

    /// <summary>
    /// Writes one page (ZERO or PAGE record) and marks it sent, leaving the migration bitmap alone.
    /// Thread-safe for distinct writers (the postcopy preempt sender uses it beside the migration task).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal void WritePage(MigrationStreamWriter writer, int blockIndex, long page)
    {
        RamBlock block = _ram.Blocks[blockIndex];
        ulong offset = (ulong)page * RamBlock.TargetPageSize;
        SentMap[blockIndex].Set(page);
        if (Xbzrle is { Started: true } xbzrle)
        {
            xbzrle.Send(writer, block, blockIndex, page, FinalStage, _stats);
            return;
        }

        if (Multifd is not null || writer.WritesByReference)
        {
            // The page is sent from guest RAM, by a multifd channel (QEMU's multifd: zero pages stay
            // ZERO records on the main stream) or by the transport at the next flush (sendmsg over
            // iovecs, as QEMU's writev): a page the guest changes before then goes out as it is
            // then, and is dirty again, so it is sent again. The RAM stays mapped while this saver lives.
            nint address = block.PageForSending(offset, out bool zero);
            if (zero)
            {
                writer.WriteRamZeroPage(block.Name, offset);
                _stats.AddDuplicate();
            }
            else
            {
                if (Multifd is { } multifd)
                {
                    multifd.Queue(block, offset, address);
                }
                else
                {
                    writer.WriteRamPageByReference(block.Name, offset, address);
                }

                _stats.AddNormal();
            }

            return;
        }

        // Copy first (natively, straight into the transport's buffer), then decide: the copy is what
        // is sent, so a page the guest changes meanwhile is caught by the dirty log, never torn in
        // the stream.
        if (writer.WriteRamPageOrZero(block.Name, offset, block, CopyPage))
        {
            _stats.AddDuplicate();
        }
        else
        {
            _stats.AddNormal();
        }
    }

    /// <summary>
    /// Postcopy: sends the whole host page that holds target page <paramref name="page"/>, its target
    /// pages in order with nothing between them, clean or dirty (QEMU's ram_save_host_page): after
    /// LISTEN the destination can only place a huge page whole, so it assembles the host page from
    /// exactly this run. For a block on target-size host pages this is <see cref="SendPage"/>.
    /// Migration task.
    /// </summary>
    /// <returns>The first target page after the host page (where a caller walking a range goes on).</returns>
    internal long SendHostPage(MigrationStreamWriter writer, int blockIndex, long page)
    {
        long perHost = (long)(_ram.Blocks[blockIndex].HostPageSize / RamBlock.TargetPageSize);
        long first = page / perHost * perHost;
        for (long target = first; target < first + perHost; target++)
        {
            SendPage(writer, blockIndex, target);
        }

        return first + perHost;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // per page, see SendPage
    private bool TryNextDirty(out int blockIndex, out long page)
    {
        for (int round = 0; round <= _dirty.Length; round++)
        {
            DirtyBitmap bitmap = _dirty[_cursorBlock];
            long next = _cursorPage < bitmap.Length ? bitmap.NextSet(_cursorPage) : -1;
            if (next >= 0)
            {
                blockIndex = _cursorBlock;
                page = next;
                _cursorPage = next + 1;
                return true;
            }

            _cursorBlock = (_cursorBlock + 1) % _dirty.Length;
            _cursorPage = 0;
        }

        blockIndex = 0;
        page = -1;
        return false;
    }

    /// <summary>Moves the scan to just after <paramref name="page"/> (postcopy locality).</summary>
    internal void MoveCursor(int blockIndex, long page)
    {
        _cursorBlock = blockIndex;
        _cursorPage = page + 1;
    }

    private static async ValueTask FlushAsync(MigrationStreamWriter writer, PipeWriter output, Func<long, ValueTask> afterFlush, CancellationToken cancellationToken)
    {
        long before = writer.Position;
        FlushResult result = await output.FlushAsync(cancellationToken).ConfigureAwait(false);
        if (result.IsCanceled || result.IsCompleted)
        {
            throw new IOException("the destination closed the connection");
        }

        await afterFlush(before).ConfigureAwait(false);
    }
}
