namespace Modular.Core.Migration.State;

/// <summary>
/// QEMU's precopy convergence rule (migration_iteration_run / migration_update_counters): the source
/// stops the guest and completes when what remains can be sent within the downtime limit at the
/// bandwidth measured over the last iteration.
/// </summary>
public static class ConvergenceRule
{
    /// <summary>
    /// The number of bytes that may remain when the switchover happens:
    /// bandwidth (bytes/ms) × downtime-limit (ms), as QEMU's <c>threshold_size</c>.
    /// </summary>
    /// <param name="bytesPerSecond">The measured bandwidth.</param>
    /// <param name="downtimeLimitMs">downtime-limit.</param>
    public static ulong ThresholdBytes(double bytesPerSecond, long downtimeLimitMs) =>
        bytesPerSecond <= 0 ? 0 : (ulong)(bytesPerSecond / 1000.0 * downtimeLimitMs);

    /// <summary>True when <paramref name="remainingBytes"/> fits the downtime limit at <paramref name="bytesPerSecond"/>.</summary>
    /// <param name="remainingBytes">Dirty bytes still to send (after a bitmap sync).</param>
    /// <param name="bytesPerSecond">The measured bandwidth.</param>
    /// <param name="downtimeLimitMs">downtime-limit.</param>
    public static bool HasConverged(ulong remainingBytes, double bytesPerSecond, long downtimeLimitMs) =>
        remainingBytes <= ThresholdBytes(bytesPerSecond, downtimeLimitMs);

    /// <summary>The downtime expected if the switchover happened now, in milliseconds (query-migrate's expected-downtime).</summary>
    /// <param name="remainingBytes">Dirty bytes still to send.</param>
    /// <param name="bytesPerSecond">The measured bandwidth.</param>
    public static long ExpectedDowntimeMs(ulong remainingBytes, double bytesPerSecond) =>
        bytesPerSecond <= 0 ? 0 : (long)Math.Ceiling(remainingBytes / bytesPerSecond * 1000.0);
}

/// <summary>
/// Measures the migration's bandwidth over one iteration (QEMU measures per iteration of roughly
/// 100 ms). Migration thread only.
/// </summary>
public sealed class BandwidthEstimator
{
    private readonly TimeProvider _clock;
    private long _windowStart;
    private ulong _windowBytes;

    /// <summary>Creates the estimator.</summary>
    /// <param name="clock">The time source (a fake in tests).</param>
    public BandwidthEstimator(TimeProvider? clock = null)
    {
        _clock = clock ?? TimeProvider.System;
        _windowStart = _clock.GetTimestamp();
    }

    /// <summary>The last bandwidth measured, in bytes per second (0 before the first window closes).</summary>
    public double BytesPerSecond { get; private set; }

    /// <summary>Counts bytes sent.</summary>
    /// <param name="bytes">Bytes written to the transport.</param>
    public void Add(ulong bytes) => _windowBytes += bytes;

    /// <summary>Closes the window when at least <paramref name="minimumWindow"/> passed; returns true when a new figure is ready.</summary>
    /// <param name="minimumWindow">QEMU uses 100 ms.</param>
    public bool TryCloseWindow(TimeSpan minimumWindow)
    {
        long now = _clock.GetTimestamp();
        TimeSpan elapsed = _clock.GetElapsedTime(_windowStart, now);
        if (elapsed < minimumWindow || elapsed <= TimeSpan.Zero)
        {
            return false;
        }

        BytesPerSecond = _windowBytes / elapsed.TotalSeconds;
        _windowBytes = 0;
        _windowStart = now;
        return true;
    }
}
