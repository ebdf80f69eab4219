namespace Modular.Core.Migration.State;

/// <summary>
/// QEMU's auto-converge parameters (migrate-set-parameters), with QEMU's defaults and ranges.
/// </summary>
/// <param name="Initial">cpu-throttle-initial: the first throttle, percent (1-99).</param>
/// <param name="Increment">cpu-throttle-increment: added at each later step, percent (1-99).</param>
/// <param name="Max">max-cpu-throttle: the highest throttle, percent (1-99).</param>
/// <param name="TriggerThreshold">throttle-trigger-threshold: a period is "too dirty" when the guest dirtied more than this percentage of what was sent in it (1-100).</param>
/// <param name="TailSlow">cpu-throttle-tailslow: near the end, step by what the dirty rate needs rather than by the whole increment.</param>
public sealed record ThrottleParameters(int Initial = 20, int Increment = 10, int Max = 99, int TriggerThreshold = 50, bool TailSlow = false)
{
    /// <summary>QEMU's defaults.</summary>
    public static ThrottleParameters Default { get; } = new();

    /// <summary>The first value out of QEMU's range, as QEMU's migrate_params_check words it; null when all are in range.</summary>
    public string? Problem() =>
        Initial is < 1 or > 99 ? "Parameter 'cpu-throttle-initial' expects an integer in the range of 1 to 99"
        : Increment is < 1 or > 99 ? "Parameter 'cpu-throttle-increment' expects an integer in the range of 1 to 99"
        : Max is < 1 or > 99 ? "Parameter 'max-cpu-throttle' expects an integer in the range of 1 to 99"
        : TriggerThreshold is < 1 or > 100 ? "Parameter 'throttle-trigger-threshold' expects an integer in the range of 1 to 100"
        : null;
}

/// <summary>
/// Auto-converge's rule, as QEMU's migration_trigger_throttle and mig_throttle_guest_down: after
/// each dirty-bitmap sync that closes a period of at least a second, compare the bytes the guest
/// dirtied in the period with the bytes sent in it. When the guest dirtied more than
/// throttle-trigger-threshold percent of them in two such periods (not necessarily in a row, as in
/// QEMU), throttle the vCPUs: cpu-throttle-initial the first time, then cpu-throttle-increment more
/// each time (with cpu-throttle-tailslow, no more than the dirty rate calls for), never above
/// max-cpu-throttle. Migration task only.
/// </summary>
public sealed class AutoConverge
{
    /// <summary>QEMU compares periods of at least this long (migration_bitmap_sync: "more than 1 second").</summary>
    public static readonly TimeSpan MinimumPeriod = TimeSpan.FromSeconds(1);

    private readonly ThrottleParameters _parameters;
    private int _highPeriods;
    private long _periodStartMs;
    private long _periodStartBytes;
    private long _periodDirtyBytes;

    /// <param name="parameters">The migration's throttle parameters.</param>
    /// <param name="nowMs">The time the migration's first pass started, in ms on any monotonic clock.</param>
    /// <param name="sentBytes">The bytes sent by then.</param>
    public AutoConverge(ThrottleParameters parameters, long nowMs, long sentBytes)
    {
        _parameters = parameters;
        _periodStartMs = nowMs;
        _periodStartBytes = sentBytes;
    }

    /// <summary>
    /// One dirty-bitmap sync: <paramref name="dirtyBytes"/> were found dirty, at <paramref name="nowMs"/>
    /// with <paramref name="sentBytes"/> sent so far in all. Returns the throttle to set (percent),
    /// or null to leave it as it is.
    /// </summary>
    /// <param name="dirtyBytes">Bytes found dirty by this sync.</param>
    /// <param name="nowMs">Now, on the clock given to the constructor.</param>
    /// <param name="sentBytes">Bytes sent so far.</param>
    /// <param name="currentPercentage">The throttle now (0: none).</param>
    public int? OnSync(long dirtyBytes, long nowMs, long sentBytes, int currentPercentage)
    {
        _periodDirtyBytes += dirtyBytes;
        if (nowMs - _periodStartMs < MinimumPeriod.TotalMilliseconds)
        {
            return null;
        }

        long sentInPeriod = sentBytes - _periodStartBytes;
        long dirtyInPeriod = _periodDirtyBytes;
        _periodStartMs = nowMs;
        _periodStartBytes = sentBytes;
        _periodDirtyBytes = 0;
        double threshold = sentInPeriod * (_parameters.TriggerThreshold / 100.0);
        if (dirtyInPeriod <= threshold || ++_highPeriods < 2)
        {
            return null;
        }

        _highPeriods = 0;
        return Next(currentPercentage, dirtyInPeriod, threshold);
    }

    /// <summary>QEMU's mig_throttle_guest_down: the throttle after <paramref name="current"/> (0: none yet).</summary>
    private int Next(int current, double dirtyInPeriod, double threshold)
    {
        if (current == 0)
        {
            return _parameters.Initial;
        }

        double increment = _parameters.Increment;
        if (_parameters.TailSlow)
        {
            // The CPU share that would bring the dirty bytes down to the threshold, and no faster.
            double cpuNow = 100 - current;
            double cpuIdeal = cpuNow * (threshold / dirtyInPeriod);
            increment = Math.Min(cpuNow - cpuIdeal, _parameters.Increment);
        }

        return (int)Math.Min(current + increment, _parameters.Max);
    }
}
