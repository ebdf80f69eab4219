using System.Runtime;
using Microsoft.Extensions.Logging;

namespace Modular.Core.Migration.Postcopy;

/// <summary>
/// Keeps the garbage collector out of postcopy's running phase with a no-GC region
/// (<see cref="GC.TryStartNoGCRegion(long)"/>), on both sides. A collection stops every managed thread
/// of the process: on a postcopy destination the fault thread and the preempt reader, on the source
/// the return-path thread that sends requested pages. Measured on the reference host: a background
/// gen2 collection in half of the postcopy runs on the destination, with 6-10 ms of pause, and a
/// request that arrived then took 21 ms (its usual cost is about 0.1 ms). The region is entered
/// where a collection does no harm (the destination at POSTCOPY_ADVISE, the source before it stops
/// the guest for the switch; entering may collect first) and ends with postcopy. A side allocating
/// more than the budget ends the region early with an ordinary collection; a process that has one
/// already (both sides in one process, as in tests) goes without.
/// </summary>
internal sealed class GcQuietRegion : IDisposable
{
    /// <summary>What a side may allocate inside the region (postcopy allocates a few MB per GiB of RAM).</summary>
    internal const long Budget = 64L << 20;

    private readonly bool _entered;
    private int _ended;

    private GcQuietRegion(bool entered) => _entered = entered;

    /// <summary>True while this region holds the process's no-GC region.</summary>
    internal bool IsActive => _entered && Volatile.Read(ref _ended) == 0 && GCSettings.LatencyMode == GCLatencyMode.NoGCRegion;

    /// <summary>Enters a region, or returns one that does nothing when the runtime refuses (another region is active, say).</summary>
    internal static GcQuietRegion Enter(ILogger logger, string side)
    {
        try
        {
            if (GCSettings.LatencyMode != GCLatencyMode.NoGCRegion && GC.TryStartNoGCRegion(Budget))
            {
                logger.LogDebug("{Side}: no garbage collection until postcopy ends (a no-GC region of {Budget} MiB)", side, Budget >> 20);
                return new GcQuietRegion(entered: true);
            }
        }
        catch (InvalidOperationException)
        {
            // A region is already active in this process.
        }
        catch (ArgumentOutOfRangeException ex)
        {
            logger.LogDebug("{Side}: the runtime refused a no-GC region of {Budget} MiB: {Error}", side, Budget >> 20, ex.Message);
        }

        return new GcQuietRegion(entered: false);
    }

    /// <summary>
    /// Waits, at most <paramref name="limit"/>, until the finalizer thread has done what the
    /// collection of <see cref="Enter"/> (or an earlier one) gave it. True when it has; false when it
    /// was still busy at the limit (a finalizer that blocks), and nothing else changes then.
    /// </summary>
    /// <remarks>
    /// The source calls this before it stops the guest for the postcopy switch. Traced on the
    /// reference host (session 22): the collection that grants the region wakes the finalizer thread,
    /// which then ran for 4 ms on the core where the pausing thread had just moved the kicked vCPU
    /// thread (<see cref="Vcpus.ParkWait.LendCpu"/>), and the vCPU left KVM_RUN only after it: a
    /// 4.1-4.5 ms stop, a 4 ms downtime. Alternating bench runs of the postcopy row (3 rounds of 15
    /// runs per transport, 90 switches each): stops over 3 ms in 0 of 90 with this wait against 4 of 90
    /// without, over 1 ms in 1 against 5; total times and request latencies unchanged. The wait itself
    /// took 5-8 ms there, while the guest still runs.
    /// </remarks>
    internal static async Task<bool> SettleFinalizersAsync(TimeSpan limit)
    {
        try
        {
            await Task.Run(GC.WaitForPendingFinalizers).WaitAsync(limit).ConfigureAwait(false);
            return true;
        }
        catch (TimeoutException)
        {
            return false;
        }
    }

    /// <summary>Ends the region; harmless twice, and when the budget ran out and a collection already ended it.</summary>
    public void Dispose()
    {
        if (!_entered || Interlocked.Exchange(ref _ended, 1) != 0)
        {
            return;
        }

        try
        {
            if (GCSettings.LatencyMode == GCLatencyMode.NoGCRegion)
            {
                GC.EndNoGCRegion();
            }
        }
        catch (InvalidOperationException)
        {
            // The budget ran out (or someone collected): a collection has ended the region.
        }
    }
}
