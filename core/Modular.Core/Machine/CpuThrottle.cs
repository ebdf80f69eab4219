using System.Diagnostics;
using Modular.Core.Accel;

namespace Modular.Core.Machine;

/// <summary>
/// CPU throttling, as QEMU's cpu-throttle: while a percentage P (1 to 99) is set, every
/// <c>10 ms / (1 - P/100)</c> each running vCPU is made to sleep <c>P/(100 - P) x 10 ms</c> outside
/// the guest, so that it runs (100 - P) % of the time. Auto-converge sets it when a precopy migration
/// does not keep up with the guest's dirtying (<see cref="Migration.State.AutoConverge"/>), and stops
/// it when the migration ends.
/// </summary>
/// <remarks>
/// Threads: <see cref="Set"/>, <see cref="Stop"/> and <see cref="Percentage"/> from any thread; the
/// slices are handed out by a thread of its own ("cpu throttle"), which runs only while throttling.
/// </remarks>
public sealed class CpuThrottle : IDisposable
{
    /// <summary>QEMU's CPU_THROTTLE_TIMESLICE_NS: the running part of one period at 0 %.</summary>
    public static readonly TimeSpan TimeSlice = TimeSpan.FromMilliseconds(10);

    /// <summary>QEMU's CPU_THROTTLE_PCT_MIN and CPU_THROTTLE_PCT_MAX.</summary>
    public const int MinPercentage = 1, MaxPercentage = 99;

    private readonly Action<TimeSpan> _sleepEachVcpu;
    private readonly object _gate = new();
    private int _percentage;
    private long _slices;
    private Thread? _thread;
    private bool _disposed;

    /// <param name="sleepEachVcpu">Makes every running vCPU sleep this long (<see cref="IAccelerator.Throttle"/>).</param>
    internal CpuThrottle(Action<TimeSpan> sleepEachVcpu)
    {
        _sleepEachVcpu = sleepEachVcpu;
    }

    /// <summary>The percentage now, 0 when not throttling (query-migrate's cpu-throttle-percentage).</summary>
    public int Percentage => Volatile.Read(ref _percentage);

    /// <summary>Slices handed out so far (each one sleep per vCPU); for tests and logs.</summary>
    public long Slices => Interlocked.Read(ref _slices);

    /// <summary>How long each vCPU sleeps per period at <paramref name="percentage"/>.</summary>
    public static TimeSpan SleepFor(int percentage) => TimeSlice * (percentage / (100.0 - percentage));

    /// <summary>The period at <paramref name="percentage"/>: the time slice plus the sleep.</summary>
    public static TimeSpan PeriodFor(int percentage) => TimeSlice / (1 - (percentage / 100.0));

    /// <summary>Throttles at <paramref name="percentage"/>, clamped to 1-99 as QEMU's cpu_throttle_set does; the first slice comes one time slice from now.</summary>
    public void Set(int percentage)
    {
        percentage = Math.Clamp(percentage, MinPercentage, MaxPercentage);
        lock (_gate)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            Volatile.Write(ref _percentage, percentage);
            if (_thread is null)
            {
                _thread = new Thread(Run) { IsBackground = true, Name = "cpu throttle" };
                _thread.Start();
            }

            Monitor.PulseAll(_gate);
        }
    }

    /// <summary>Stops throttling (QEMU's cpu_throttle_stop); vCPUs asleep finish their slice. Harmless when not throttling.</summary>
    public void Stop()
    {
        lock (_gate)
        {
            Volatile.Write(ref _percentage, 0);
            Monitor.PulseAll(_gate);
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        Thread? thread;
        lock (_gate)
        {
            _disposed = true;
            Volatile.Write(ref _percentage, 0);
            thread = _thread;
            Monitor.PulseAll(_gate);
        }

        if (thread is not null && thread != Thread.CurrentThread)
        {
            thread.Join();
        }
    }

    private void Run()
    {
        lock (_gate)
        {
            long next = Stopwatch.GetTimestamp() + (long)(TimeSlice.TotalSeconds * Stopwatch.Frequency);
            while (true)
            {
                int percentage = _percentage;
                if (percentage == 0)
                {
                    _thread = null;
                    return;
                }

                long left = next - Stopwatch.GetTimestamp();
                if (left > 0)
                {
                    _ = Monitor.Wait(_gate, TimeSpan.FromSeconds(left / (double)Stopwatch.Frequency));
                    continue; // woken early: look at the percentage again
                }

                _sleepEachVcpu(SleepFor(percentage));
                Interlocked.Increment(ref _slices);
                next = Stopwatch.GetTimestamp() + (long)(PeriodFor(percentage).TotalSeconds * Stopwatch.Frequency);
            }
        }
    }
}
