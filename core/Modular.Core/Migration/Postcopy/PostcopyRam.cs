using System.Diagnostics;
using Modular.Abstractions.Faults;
using Modular.Core.Memory;

namespace Modular.Core.Migration.Postcopy;

/// <summary>
/// The destination's guest RAM during a postcopy migration: one <see cref="PageStateMap"/> per RAM
/// block, the fault backend, and where each outstanding request started (for the latency and
/// blocktime figures). Created at POSTCOPY_ADVISE.
/// </summary>
/// <remarks>
/// Threads: <see cref="Discard"/>, <see cref="Arm"/> on the main incoming task; placement on the main
/// incoming task before LISTEN (plain native copies) and on the listen thread after it (atomic
/// placement through the fault backend; also on the fault thread for page-channel reads); <see cref="OnFault"/> on the fault thread.
/// Blocks on huge host pages (2 MiB hugetlbfs): after LISTEN a whole host page is placed at once
/// (<see cref="PlaceHostPage"/>, fed by a <see cref="HostPageAssembler"/>), faults request whole host
/// pages, and the page maps (per target page) move all target pages of a host page together. The page maps
/// are lock-free; nothing here takes a lock or allocates on the fault or placement path.
/// Managed code never reads or writes armed RAM: copies are native (RamBlock.CopyIn) or ioctls.
/// Blocks on shared memory (a memfd), with a backend that offers <see cref="ISharedRamFaultBackend"/>:
/// after LISTEN a page is written through the block's second mapping by the one thread that claims
/// it (a bit per page, beside the page map and not a state of it) and then mapped (UFFDIO_CONTINUE);
/// ADVISE and discards only empty the guest's mapping, the memory stays populated.
/// </remarks>
internal sealed class PostcopyRam : IDisposable
{
    private readonly IReadOnlyList<RamBlock> _blocks;
    private readonly PageStateMap[] _maps;
    private readonly long[][] _requestedAt;
    private readonly short[][] _requestedBy;
    private readonly HostRamRange[] _ranges;

    // Per block: the backend that maps its pages from shared memory (minor faults), or null when its
    // pages are placed as copies. For those blocks, one bit per target page: set by the thread that
    // writes the page after LISTEN, so that a page arriving twice (preempt channel and stream) is
    // written once, and never over a page the guest may already be changing. A second bit per page,
    // set once the claiming thread has finished writing it: from then on any thread may map it.
    private readonly ISharedRamFaultBackend?[] _shared;
    private readonly ulong[][] _claimed;
    private readonly ulong[][] _written;
    private long _mappedAheadOnFault;
    private long _mappedAheadOnCopy;
    private readonly Func<int[]> _vcpuThreadIds;
    private int[] _knownVcpuThreads = [];
    private volatile bool _armed;
    private int _disarmed;

    /// <param name="ram">The destination's guest RAM.</param>
    /// <param name="backend">The opened fault backend.</param>
    /// <param name="vcpuThreadIds">The kernel thread id of each vCPU's thread (0 before it starts), to tell which vCPU waited on a fault; null: none is a vCPU.</param>
    internal PostcopyRam(GuestRam ram, IFaultBackend backend, Func<int[]>? vcpuThreadIds = null)
    {
        _blocks = ram.Blocks;
        Backend = backend;
        _vcpuThreadIds = vcpuThreadIds ?? (() => []);
        _maps = _blocks.Select(b => new PageStateMap((ulong)b.PageCount)).ToArray();
        _requestedAt = _blocks.Select(b => new long[b.PageCount]).ToArray();
        _requestedBy = _blocks.Select(b => new short[b.PageCount]).ToArray();
        _ranges = _blocks.Select(b => new HostRamRange(b.HostAddress, b.Size, b.HostPageSize)).ToArray();
        Latency = new FaultLatencyRecorder(_vcpuThreadIds().Length);
        ISharedRamFaultBackend? shared = backend as ISharedRamFaultBackend;
        SharedRamUnavailableReason = shared is null
            ? "the fault backend cannot map shared memory (no ISharedRamFaultBackend)"
            : shared.SharedRamUnavailableReason;
        _shared = _blocks.Select(b => b.IsShared && b.HostPageSize == RamBlock.TargetPageSize && SharedRamUnavailableReason is null ? shared : null).ToArray();
        _claimed = SharedPageBits();
        _written = SharedPageBits();
    }

    /// <summary>One bit per target page of each block on shared memory (none for the others).</summary>
    private ulong[][] SharedPageBits() =>
        _blocks.Select((b, i) => _shared[i] is null ? [] : new ulong[(b.PageCount + 63) / 64]).ToArray();

    /// <summary>Pages a fault mapped itself, written into a run whose thread had not mapped it yet (see TryMapWritten). Any thread.</summary>
    internal long MappedAheadOnFault => Interlocked.Read(ref _mappedAheadOnFault);

    /// <summary>Pages whose second copy (the requested one) mapped them, written into such a run. Any thread.</summary>
    internal long MappedAheadOnCopy => Interlocked.Read(ref _mappedAheadOnCopy);

    /// <summary>Null when the fault backend can map shared memory; otherwise why not (shared blocks are then placed as copies).</summary>
    internal string? SharedRamUnavailableReason { get; }

    /// <summary>
    /// True when the pages of <paramref name="block"/> are written through its second mapping and
    /// then mapped (shared memory, minor faults) rather than placed as copies.
    /// </summary>
    internal bool MapsShared(RamBlock block) => _shared[IndexOf(block)] is not null;

    /// <summary>True when every block's pages are mapped from shared memory (query-migrate's placement "map").</summary>
    internal bool MapsEveryBlockShared => Array.TrueForAll(_shared, s => s is not null);

    /// <summary>The armed fault backend.</summary>
    internal IFaultBackend Backend { get; }

    /// <summary>Request-to-placement latencies and blocktime (per vCPU).</summary>
    internal FaultLatencyRecorder Latency { get; }

    /// <summary>The page map of block <paramref name="index"/>.</summary>
    internal PageStateMap Map(int index) => _maps[index];

    /// <summary>True once <see cref="Arm"/> ran (placement is atomic from then on).</summary>
    internal bool IsArmed => _armed;

    /// <summary>True when every page of every block has been received.</summary>
    internal bool IsComplete => _maps.All(m => m.IsComplete);

    /// <summary>Pages not yet received, over all blocks.</summary>
    internal ulong PagesNotReceived => (ulong)_maps.Sum(m => (long)(m.PageCount - m.ReceivedCount));

    /// <summary>
    /// POSTCOPY_ADVISE: make every page fault once armed. A block mapped from shared memory only
    /// leaves the guest's mapping (its memory stays, populated); any other block is dropped (reads as
    /// zero, as QEMU discards at ADVISE). Nothing may populate the guest's mapping meanwhile. Main
    /// incoming task.
    /// </summary>
    internal void PrepareAtAdvise()
    {
        for (int i = 0; i < _blocks.Count; i++)
        {
            if (_shared[i] is not null)
            {
                _blocks[i].Unmap(0, _blocks[i].Size);
            }
            else
            {
                _blocks[i].Discard(0, _blocks[i].Size);
            }
        }
    }

    /// <summary>
    /// POSTCOPY_RAM_DISCARD: drop [offset, +length) from the guest's mapping (MADV_DONTNEED; shared
    /// memory placed as copies: MADV_REMOVE) and mark it missing. Main incoming task, before LISTEN.
    /// </summary>
    internal void Discard(RamBlock block, ulong offset, ulong length)
    {
        int index = IndexOf(block);
        if (_shared[index] is not null)
        {
            block.Unmap(offset, length);
        }
        else
        {
            block.Discard(offset, length);
        }

        _maps[index].DiscardRange(offset / RamBlock.TargetPageSize, length / RamBlock.TargetPageSize);
    }

    /// <summary>POSTCOPY_LISTEN: seal the page maps and arm every block. Main incoming task.</summary>
    internal void Arm()
    {
        foreach (PageStateMap map in _maps)
        {
            map.BeginRunning();
        }

        for (int i = 0; i < _ranges.Length; i++)
        {
            if (_shared[i] is { } shared)
            {
                shared.ArmShared(_ranges[i]);
            }
            else
            {
                Backend.Arm(_ranges[i]);
            }
        }

        _armed = true;
    }

    /// <summary>The largest host page of any block (the size of a <see cref="HostPageAssembler"/>'s staging buffer).</summary>
    internal ulong MaxHostPageSize => _blocks.Max(b => b.HostPageSize);

    /// <summary>
    /// Places one received target page: a native copy before LISTEN, an atomic placement that wakes
    /// waiters after it; then marks it received and, if it had been requested, records the latency.
    /// Main incoming task (before LISTEN), listen thread (after), or the fault thread (a page read
    /// through the page channel; the two may race for one page: the second placement finds it present
    /// and changes nothing); allocation-free.
    /// </summary>
    internal void Place(RamBlock block, ulong offset, ReadOnlySpan<byte> page, bool isZero)
    {
        int index = IndexOf(block);
        ulong pageIndex = offset / RamBlock.TargetPageSize;
        if (!_armed)
        {
            if (!isZero || !block.IsZeroPage(offset))
            {
                block.CopyIn(offset, page);
            }
        }
        else if (block.HostPageSize != RamBlock.TargetPageSize)
        {
            throw new InvalidOperationException($"Target page 0x{offset:x} of RAM block '{block.Name}' cannot be placed alone: the block has 0x{block.HostPageSize:x}-byte host pages, which are placed whole after LISTEN (PlaceHostPage, through a HostPageAssembler).");
        }
        else if (_shared[index] is { } shared)
        {
            if (!TryWriteShared(index, block, offset, page, isZero))
            {
                // Received before LISTEN, or taken by another thread, which maps it and marks it
                // received; once that thread has written it, mapping it here need not wait for it.
                if (TryMapWritten(index, block, offset))
                {
                    Interlocked.Increment(ref _mappedAheadOnCopy);
                }

                return;
            }

            shared.MapPages(block.HostAddress + (nint)offset, RamBlock.TargetPageSize);
        }
        else if (isZero)
        {
            Backend.PlaceZeroPage(block.HostAddress + (nint)offset, RamBlock.TargetPageSize);
        }
        else
        {
            Backend.PlacePage(block.HostAddress + (nint)offset, page);
        }

        if (_maps[index].MarkReceived(pageIndex) == PageState.Requested)
        {
            RecordLatency(index, pageIndex);
        }
    }

    /// <summary>
    /// Places a run of consecutive 4 KiB pages after LISTEN in one step (<see cref="IFaultBackend.PlacePages"/>),
    /// then marks each received and records the latency of those that had been requested. Pages that
    /// were already present (placed by another channel) are left as they are and stay received.
    /// Listen thread or preempt reader (whichever owns the <see cref="PageRunBatcher"/>); allocation-free.
    /// </summary>
    /// <param name="block">A block on 4 KiB host pages.</param>
    /// <param name="offset">The first page's offset in the block.</param>
    /// <param name="contents">The pages, in order.</param>
    internal void PlaceRun(RamBlock block, ulong offset, ReadOnlySpan<byte> contents)
    {
        if (!_armed || block.HostPageSize != RamBlock.TargetPageSize)
        {
            throw new InvalidOperationException($"A run of pages at 0x{offset:x} of RAM block '{block.Name}' can only be placed after LISTEN and in a block on 0x{RamBlock.TargetPageSize:x}-byte host pages.");
        }

        int index = IndexOf(block);
        Backend.PlacePages(block.HostAddress + (nint)offset, contents, RamBlock.TargetPageSize);
        ulong first = offset / RamBlock.TargetPageSize;
        ulong end = first + (ulong)(contents.Length / RamBlock.TargetPageSize);
        for (ulong page = first; page < end; page++)
        {
            if (_maps[index].MarkReceived(page) == PageState.Requested)
            {
                RecordLatency(index, page);
            }
        }
    }

    /// <summary>
    /// After LISTEN, for a block mapped from shared memory: writes one received target page through
    /// the block's second mapping, unless the page was received before LISTEN or another thread has
    /// taken it since (then false: nothing is written, and that thread maps it). The page is not mapped
    /// yet: <see cref="MapSharedRun"/> does that. Listen thread, preempt reader or fault thread;
    /// lock-free, allocation-free.
    /// </summary>
    internal bool TryWriteShared(RamBlock block, ulong offset, ReadOnlySpan<byte> page, bool isZero) =>
        TryWriteShared(IndexOf(block), block, offset, page, isZero);

    /// <summary>
    /// Maps <paramref name="count"/> consecutive target pages of a block on shared memory, written
    /// with <see cref="TryWriteShared"/>, into the guest's mapping in one step (UFFDIO_CONTINUE),
    /// waking their waiters; then marks each received and records the latency of those requested.
    /// The thread that wrote them; allocation-free.
    /// </summary>
    internal void MapSharedRun(RamBlock block, ulong offset, int count)
    {
        int index = IndexOf(block);
        ISharedRamFaultBackend shared = _shared[index] ?? throw new InvalidOperationException($"RAM block '{block.Name}' is not mapped from shared memory.");
        shared.MapPages(block.HostAddress + (nint)offset, (ulong)count * RamBlock.TargetPageSize);
        ulong first = offset / RamBlock.TargetPageSize;
        for (ulong page = first; page < first + (ulong)count; page++)
        {
            if (_maps[index].MarkReceived(page) == PageState.Requested)
            {
                RecordLatency(index, page);
            }
        }
    }

    private bool TryWriteShared(int index, RamBlock block, ulong offset, ReadOnlySpan<byte> page, bool isZero)
    {
        ulong pageIndex = offset / RamBlock.TargetPageSize;
        if (_maps[index].GetState(pageIndex) == PageState.Received)
        {
            return false;
        }

        ref ulong word = ref _claimed[index][pageIndex / 64];
        ulong bit = 1UL << (int)(pageIndex % 64);
        if ((Interlocked.Or(ref word, bit) & bit) != 0)
        {
            return false;
        }

        block.WriteThroughAlias(offset, isZero ? default : page);
        Interlocked.Or(ref _written[index][pageIndex / 64], bit); // a full fence: the page's bytes are there before the bit
        return true;
    }

    /// <summary>
    /// Maps a page of a shared-memory block that another thread has written after LISTEN
    /// (<see cref="TryWriteShared"/>) but not mapped yet, waking its waiters, marks it received and
    /// records its latency if it was requested. The writer's own map later finds the page present and
    /// leaves it. False, changing nothing, when the page is not written yet (never taken, or its
    /// writer is still copying it in) or is already received.
    /// </summary>
    /// <remarks>
    /// Without this a requested page that the listen thread had written into a run it had not mapped
    /// yet waited for that run: traced (session 22), the listen thread, a fair-scheduled thread, lost
    /// its core for 4.4 ms in the middle of a run, and the copy of the page that came on the preempt
    /// channel meanwhile was dropped (the page was taken), so the vCPU waited 4.9 ms for its first page.
    /// Mapping before the writer is done would be wrong: its copy could land over what the guest
    /// writes once the page is mapped.
    /// </remarks>
    private bool TryMapWritten(int index, RamBlock block, ulong offset)
    {
        ulong pageIndex = offset / RamBlock.TargetPageSize;
        ulong bit = 1UL << (int)(pageIndex % 64);
        if ((Volatile.Read(ref _written[index][pageIndex / 64]) & bit) == 0 || _maps[index].GetState(pageIndex) == PageState.Received)
        {
            return false;
        }

        _shared[index]!.MapPages(block.HostAddress + (nint)offset, RamBlock.TargetPageSize);
        if (_maps[index].MarkReceived(pageIndex) == PageState.Requested)
        {
            RecordLatency(index, pageIndex);
        }

        return true;
    }

    /// <summary>
    /// Places one whole host page of a block whose host page is larger than the target page (2 MiB
    /// hugetlbfs), assembled by a <see cref="HostPageAssembler"/>: one atomic placement (UFFDIO_COPY,
    /// or a zero page when every target page in it was a ZERO record) that wakes waiters; then every
    /// target page in it goes missing/requested -> received, and the request latency is recorded once.
    /// A host page that is already present (it came twice) is left alone (the placement reports it)
    /// and its target pages stay received. Listen thread (or whichever thread owns the assembler),
    /// after LISTEN; allocation-free.
    /// </summary>
    /// <param name="block">A block with <see cref="RamBlock.HostPageSize"/> larger than the target page.</param>
    /// <param name="offset">The host page's offset in the block (host-page aligned).</param>
    /// <param name="contents">Exactly one host page (ignored when <paramref name="isZero"/>).</param>
    /// <param name="isZero">True when every target page of the host page arrived as a ZERO record.</param>
    internal PlaceResult PlaceHostPage(RamBlock block, ulong offset, ReadOnlySpan<byte> contents, bool isZero)
    {
        int index = IndexOf(block);
        nint at = block.HostAddress + (nint)offset;
        PlaceResult result = isZero ? Backend.PlaceZeroPage(at, block.HostPageSize) : Backend.PlacePage(at, contents);
        ulong first = offset / RamBlock.TargetPageSize;
        ulong count = block.HostPageSize / RamBlock.TargetPageSize;
        bool wasRequested = false;
        for (ulong page = first; page < first + count; page++)
        {
            wasRequested |= _maps[index].MarkReceived(page) == PageState.Requested;
        }

        if (wasRequested)
        {
            // The fault thread stamps the host page's first target page (see OnFault).
            RecordLatency(index, first);
        }

        return result;
    }

    /// <summary>
    /// A fault at <paramref name="hostAddress"/>: moves its host page missing -> requested (every
    /// target page in it) and says whether to ask the source, or wakes the waiter when the host page
    /// is already here. The returned offset is the host page's (aligned down to
    /// <see cref="RamBlock.HostPageSize"/>), and a request must name the whole host page. A fault on any
    /// target page of a huge page thus requests the host page once. Fault thread; allocation-free.
    /// </summary>
    /// <returns>The outcome; <see cref="FaultOutcome.Invalid"/> for an address outside guest RAM.</returns>
    /// <param name="hostAddress">The faulting address.</param>
    /// <param name="threadId">The faulting kernel thread (0 when the backend does not say): a vCPU's faults count in its blocktime.</param>
    /// <param name="block">The RAM block, for a request.</param>
    /// <param name="offset">The host page's offset in it.</param>
    internal FaultOutcome OnFault(nint hostAddress, int threadId, out RamBlock? block, out ulong offset)
    {
        for (int i = 0; i < _blocks.Count; i++)
        {
            RamBlock candidate = _blocks[i];
            ulong delta = (ulong)(hostAddress - candidate.HostAddress);
            if (hostAddress >= candidate.HostAddress && delta < candidate.Size)
            {
                block = candidate;
                offset = delta / candidate.HostPageSize * candidate.HostPageSize;
                ulong first = offset / RamBlock.TargetPageSize;
                if (_maps[i].GetState(first) == PageState.Missing)
                {
                    // Only this thread requests, so the stamp is written before the page can be
                    // Requested, and the listen thread reads it only after seeing Requested.
                    _requestedBy[i][first] = (short)(VcpuOf(threadId) + 1);
                    Volatile.Write(ref _requestedAt[i][first], Stopwatch.GetTimestamp());
                }

                // Here already if the listen thread has written it into a run it has not mapped yet:
                // mapped now, it goes missing -> received (or requested -> received, if an earlier
                // fault asked for it), and nothing is asked of the source.
                if (_shared[i] is not null && TryMapWritten(i, candidate, offset))
                {
                    Interlocked.Increment(ref _mappedAheadOnFault);
                    return FaultOutcome.AlreadyReceived;
                }

                // The target pages of a host page share one state (a host page is discarded and
                // placed whole), so the first one decides; the others follow it to requested. The
                // listen thread may be marking them received meanwhile: TryRequest leaves those be.
                FaultOutcome outcome = _maps[i].TryRequest(first);
                if (outcome == FaultOutcome.NeedsRequest)
                {
                    ulong count = candidate.HostPageSize / RamBlock.TargetPageSize;
                    for (ulong page = first + 1; page < first + count; page++)
                    {
                        _maps[i].TryRequest(page);
                    }
                }
                else if (outcome == FaultOutcome.AlreadyReceived)
                {
                    if (_shared[i] is { } shared)
                    {
                        // The guest's mapping may have lost the page (reclaim) or never had it (received
                        // before LISTEN through the other mapping): map it; if it is mapped, this wakes.
                        shared.MapPages(candidate.HostAddress + (nint)offset, candidate.HostPageSize);
                    }
                    else
                    {
                        Backend.Wake(candidate.HostAddress + (nint)offset, candidate.HostPageSize);
                    }
                }

                return outcome;
            }
        }

        block = null;
        offset = 0;
        return FaultOutcome.Invalid;
    }

    /// <summary>
    /// Postcopy recovery: block <paramref name="index"/>'s received bitmap in QEMU's layout (bit n,
    /// little-endian bit order, set when target page n has arrived; padded to 8 bytes), for
    /// RECV_BITMAP. Any thread; pages arriving meanwhile may or may not be counted (the source then
    /// sends them again, which is harmless).
    /// </summary>
    internal byte[] ReceivedBitmap(int index)
    {
        PageStateMap map = _maps[index];
        byte[] bitmap = new byte[(int)(((map.PageCount + 63) / 64) * 8)];
        for (ulong page = 0; page < map.PageCount; page++)
        {
            if (map.GetState(page) == PageState.Received)
            {
                bitmap[(int)(page / 8)] |= (byte)(1 << (int)(page % 8));
            }
        }

        return bitmap;
    }

    /// <summary>
    /// Postcopy recovery: the host pages requested and not yet received (block, host page offset), to
    /// ask for again on the new connection (QEMU's migrate_send_rp_req_pages_pending). Any thread.
    /// </summary>
    internal List<(RamBlock Block, ulong Offset)> PendingRequests()
    {
        var pending = new List<(RamBlock, ulong)>();
        for (int i = 0; i < _blocks.Count; i++)
        {
            ulong perHost = _blocks[i].HostPageSize / RamBlock.TargetPageSize;
            for (ulong page = 0; page < _maps[i].PageCount; page += perHost)
            {
                if (_maps[i].GetState(page) == PageState.Requested)
                {
                    pending.Add((_blocks[i], page * RamBlock.TargetPageSize));
                }
            }
        }

        return pending;
    }

    /// <summary>
    /// Disarms every block (waking every waiter: a missing page then reads as zero, so call this only
    /// when all pages arrived or the guest is being given up). Idempotent; any thread.
    /// </summary>
    internal void DisarmAll()
    {
        if (Interlocked.Exchange(ref _disarmed, 1) != 0 || !_armed)
        {
            return;
        }

        foreach (HostRamRange range in _ranges)
        {
            try
            {
                Backend.Disarm(range);
            }
            catch (FaultBackendException)
            {
                // Best effort while tearing down: closing the userfaultfd (Dispose) wakes everyone too.
            }
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        DisarmAll();
        Backend.Shutdown();
        Backend.Dispose();
    }

    /// <summary>Records the latency of a requested page and, when a vCPU asked for it, that vCPU's blocktime. Placing thread.</summary>
    private void RecordLatency(int block, ulong page)
    {
        long ticks = Stopwatch.GetTimestamp() - Volatile.Read(ref _requestedAt[block][page]);
        Latency.Add(ticks, _requestedBy[block][page] - 1);
    }

    /// <summary>
    /// The vCPU whose thread is <paramref name="threadId"/>, or -1 (the main task inside a device
    /// load, or an unknown thread). Fault thread; allocates only while some vCPU thread has not
    /// started yet (the known ids are fetched again when a thread is not found among them).
    /// </summary>
    private int VcpuOf(int threadId)
    {
        if (threadId == 0)
        {
            return -1;
        }

        int found = IndexOf(_knownVcpuThreads, threadId);
        if (found < 0 && (_knownVcpuThreads.Length == 0 || IndexOf(_knownVcpuThreads, 0) >= 0))
        {
            _knownVcpuThreads = _vcpuThreadIds();
            found = IndexOf(_knownVcpuThreads, threadId);
        }

        return found;
    }

    // Not Array.IndexOf<int>: that generic instantiation has no precompiled code, so the first page
    // request compiled it on the fault thread (0.8-1.5 ms of the first request, measured).
    private static int IndexOf(int[] ids, int id)
    {
        for (int i = 0; i < ids.Length; i++)
        {
            if (ids[i] == id)
            {
                return i;
            }
        }

        return -1;
    }

    private int IndexOf(RamBlock block)
    {
        for (int i = 0; i < _blocks.Count; i++)
        {
            if (ReferenceEquals(_blocks[i], block))
            {
                return i;
            }
        }

        throw new ArgumentException($"RAM block '{block.Name}' is not part of this machine.", nameof(block));
    }
}
