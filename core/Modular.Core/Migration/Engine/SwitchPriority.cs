using System.Runtime.InteropServices;
using Modular.Abstractions.Threading;
using Modular.Core.Interop;

namespace Modular.Core.Migration.Engine;

/// <summary>What <see cref="SwitchPriority.RaiseCurrentThread"/> did to the calling thread.</summary>
internal enum SwitchPriorityKind
{
    /// <summary>Nothing: not permitted, or already there.</summary>
    Unchanged,

    /// <summary>nice -20 (SCHED_OTHER).</summary>
    Nice,

    /// <summary>SCHED_FIFO priority 1.</summary>
    RealTime,
}

/// <summary>
/// The postcopy switch thread's priority, from just before it stops the vCPUs until the package is
/// handed to the transport, restored on dispose (by thread id, so right from any thread).
/// <para>Under <c>migration.latency-threads</c> <c>realtime</c> (the default) the thread runs
/// SCHED_FIFO for that time, else at nice -20. Measured on this 2-core host (session 20, alternating
/// runs of the bench's postcopy row, 120 switches each, with timestamps at every step of the stop):
/// at nice -20 the switch thread itself lost its core for 3-5 ms in some switches (between raising
/// itself and taking the run-state lock, or after the vCPU had parked: a fair thread keeps its slice
/// until the next tick), and 20 of 120 stops took over 1 ms. Real-time, together with the pause that
/// lends the switch thread's CPU to a kicked vCPU (<see cref="Vcpus.ParkWait.LendCpu"/>), 3 of 120.</para>
/// <para>Safe as a real-time thread because nothing on it spins: the vCPU pause blocks (a
/// real-time spinner would keep a fair vCPU thread off its core), and the work between is about
/// 0.5 ms of CPU (sync, discards, package). The kernel's real-time throttling bounds it anyway.</para>
/// </summary>
internal readonly struct SwitchPriority : IDisposable
{
    private readonly int _threadId;
    private readonly int _previousNice;
    private readonly bool _realTime;

    private SwitchPriority(int threadId, int previousNice, bool realTime)
    {
        _threadId = threadId;
        _previousNice = previousNice;
        _realTime = realTime;
    }

    /// <summary>What was done to the thread.</summary>
    internal SwitchPriorityKind Kind => _threadId == 0 ? SwitchPriorityKind.Unchanged : _realTime ? SwitchPriorityKind.RealTime : SwitchPriorityKind.Nice;

    /// <summary>Raises the calling thread as <paramref name="policy"/> allows: SCHED_FIFO 1 under <see cref="LatencyThreadPolicy.RealTime"/> where permitted, else nice -20 where permitted.</summary>
    internal static SwitchPriority RaiseCurrentThread(LatencyThreadPolicy policy)
    {
        int threadId = Libc.Gettid();
        Marshal.SetLastPInvokeError(0);
        int previous = Libc.Getpriority(Libc.PRIO_PROCESS, (uint)threadId);
        if (previous == -1 && Marshal.GetLastPInvokeError() != 0)
        {
            return default;
        }

        if (policy == LatencyThreadPolicy.RealTime)
        {
            int priority = 1;
            if (Libc.SchedSetscheduler(0, Libc.SCHED_FIFO | Libc.SCHED_RESET_ON_FORK, ref priority) == 0)
            {
                return new SwitchPriority(threadId, previous, realTime: true);
            }
        }

        return previous != NiceScope.Raised && Libc.Setpriority(Libc.PRIO_PROCESS, (uint)threadId, NiceScope.Raised) == 0
            ? new SwitchPriority(threadId, previous, realTime: false)
            : default;
    }

    /// <summary>Back to SCHED_OTHER at the previous nice value. Any thread; harmless twice.</summary>
    public void Dispose()
    {
        if (_threadId == 0)
        {
            return;
        }

        if (_realTime)
        {
            int priority = 0;
            _ = Libc.SchedSetscheduler(_threadId, Libc.SCHED_OTHER, ref priority);
        }

        _ = Libc.Setpriority(Libc.PRIO_PROCESS, (uint)_threadId, _previousNice);
    }
}
