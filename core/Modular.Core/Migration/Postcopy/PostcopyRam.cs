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
/// placement through the fault backend; also on the fault thread for page-channel reads); <see cref="OnFault"/> on the fault thread. The page maps
/// are lock-free; nothing here takes a lock or allocates on the fault or placement path.
/// Managed code never reads or writes armed RAM: copies are native (RamBlock.CopyIn) or ioctls.
/// </remarks>
internal sealed class PostcopyRam : IDisposable
{
    private readonly IReadOnlyList<RamBlock> _blocks;
    private readonly PageStateMap[] _maps;
    private readonly long[][] _requestedAt;
    private readonly HostRamRange[] _ranges;
    private volatile bool _armed;
    private int _disarmed;

    internal PostcopyRam(GuestRam ram, IFaultBackend backend)
    {
        _blocks = ram.Blocks;
        Backend = backend;
        _maps = _blocks.Select(b => new PageStateMap((ulong)b.PageCount)).ToArray();
        _requestedAt = _blocks.Select(b => new long[b.PageCount]).ToArray();
        _ranges = _blocks.Select(b => new HostRamRange(b.HostAddress, b.Size, b.HostPageSize)).ToArray();
    }

    /// <summary>The armed fault backend.</summary>
    internal IFaultBackend Backend { get; }

    /// <summary>Request-to-placement latencies and blocktime.</summary>
    internal FaultLatencyRecorder Latency { get; } = new();

    /// <summary>The page map of block <paramref name="index"/>.</summary>
    internal PageStateMap Map(int index) => _maps[index];

    /// <summary>True once <see cref="Arm"/> ran (placement is atomic from then on).</summary>
    internal bool IsArmed => _armed;

    /// <summary>True when every page of every block has been received.</summary>
    internal bool IsComplete => _maps.All(m => m.IsComplete);

    /// <summary>Pages not yet received, over all blocks.</summary>
    internal ulong PagesNotReceived => (ulong)_maps.Sum(m => (long)(m.PageCount - m.ReceivedCount));

    /// <summary>POSTCOPY_RAM_DISCARD: drop [offset, +length) (MADV_DONTNEED) and mark it missing. Main incoming task, before LISTEN.</summary>
    internal void Discard(RamBlock block, ulong offset, ulong length)
    {
        block.Discard(offset, length);
        _maps[IndexOf(block)].DiscardRange(offset / RamBlock.TargetPageSize, length / RamBlock.TargetPageSize);
    }

    /// <summary>POSTCOPY_LISTEN: seal the page maps and arm every block. Main incoming task.</summary>
    internal void Arm()
    {
        foreach (PageStateMap map in _maps)
        {
            map.BeginRunning();
        }

        foreach (HostRamRange range in _ranges)
        {
            Backend.Arm(range);
        }

        _armed = true;
    }

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
            Latency.Add(Stopwatch.GetTimestamp() - Volatile.Read(ref _requestedAt[index][pageIndex]));
        }
    }

    /// <summary>
    /// A fault at <paramref name="hostAddress"/>: moves its page missing -> requested and says whether
    /// to ask the source (block and byte offset returned), or wakes the waiter when the page is
    /// already here. Fault thread; allocation-free.
    /// </summary>
    /// <returns>The outcome; <see cref="FaultOutcome.Invalid"/> for an address outside guest RAM.</returns>
    internal FaultOutcome OnFault(nint hostAddress, out RamBlock? block, out ulong offset)
    {
        for (int i = 0; i < _blocks.Count; i++)
        {
            RamBlock candidate = _blocks[i];
            ulong delta = (ulong)(hostAddress - candidate.HostAddress);
            if (hostAddress >= candidate.HostAddress && delta < candidate.Size)
            {
                block = candidate;
                ulong page = delta / RamBlock.TargetPageSize;
                offset = page * RamBlock.TargetPageSize;
                if (_maps[i].GetState(page) == PageState.Missing)
                {
                    // Only this thread requests, so the stamp is written before the page can be
                    // Requested, and the listen thread reads it only after seeing Requested.
                    Volatile.Write(ref _requestedAt[i][page], Stopwatch.GetTimestamp());
                }

                FaultOutcome outcome = _maps[i].TryRequest(page);
                if (outcome == FaultOutcome.AlreadyReceived)
                {
                    Backend.Wake(candidate.HostAddress + (nint)offset, RamBlock.TargetPageSize);
                }

                return outcome;
            }
        }

        block = null;
        offset = 0;
        return FaultOutcome.Invalid;
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
