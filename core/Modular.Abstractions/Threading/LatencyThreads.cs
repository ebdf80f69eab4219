using System.Runtime.InteropServices;

namespace Modular.Abstractions.Threading;

/// <summary>How a migration's latency-critical threads are scheduled (the config's <c>migration.latency-threads</c>).</summary>
public enum LatencyThreadPolicy
{
    /// <summary>SCHED_FIFO at the lowest real-time priority where permitted, else nice -20 where permitted.</summary>
    RealTime,

    /// <summary>nice -20 where permitted (SCHED_OTHER).</summary>
    Nice,

    /// <summary>Left at the process's priority, as QEMU leaves its threads.</summary>
    Off,
}

/// <summary>What <see cref="LatencyThreads.RaiseCurrentThread"/> did to the calling thread.</summary>
public enum LatencyThreadPriority
{
    /// <summary>Nothing: the policy is off, or the host did not permit a change.</summary>
    Unchanged,

    /// <summary>nice -20 (SCHED_OTHER).</summary>
    Nice,

    /// <summary>SCHED_FIFO priority 1.</summary>
    RealTime,
}

/// <summary>
/// Raises the few threads a postcopy page request travels through, so that a request does not wait
/// for a core behind bulk-copy threads: the destination's fault thread, the receive thread of its
/// preempt channel, and the source's return-path reader. A transport plugin calls
/// <see cref="RaiseCurrentThread"/> on its own latency-critical receive threads; the host sets
/// <see cref="Policy"/> from its config before a migration starts.
/// </summary>
/// <remarks>
/// <para>Why real-time: Linux's fair scheduler (EEVDF) lets a running thread finish its slice
/// (1.5 ms on a 2-core host) before a woken thread of any nice value takes its core, unless the
/// woken thread's deadline is earlier; a real-time thread takes the core at the running thread's next
/// return from the kernel. Traced on this 2-core host: the fault thread, at nice -20, woken on the core
/// where the source's sender made 14 us sendmsg calls, waited 1.5 ms for it. Pooled over 8 alternating
/// runs of the bench's postcopy row over tcp: p99 481 us against 3206 us at nice -20, requests over
/// 1 ms 0.9 % against 4.0 %.</para>
/// <para>Safety: these threads sleep in the kernel between messages and do a few microseconds of work
/// per message; the kernel's real-time throttling (<c>kernel.sched_rt_runtime_us</c>) keeps the
/// rest of the host running even if one spun. Children forked from a raised thread start as
/// ordinary threads (SCHED_RESET_ON_FORK).</para>
/// <para>A raised thread keeps its priority until it ends: call this only on threads of your own,
/// never on a thread-pool thread.</para>
/// </remarks>
public static partial class LatencyThreads
{
    private const int SchedFifo = 1;
    private const int SchedResetOnFork = 0x40000000;
    private const int RealTimePriority = 1;
    private const int RaisedNice = -20;
    private const int PrioProcess = 0;

    private static volatile LatencyThreadPolicy s_policy = LatencyThreadPolicy.RealTime;

    /// <summary>The policy for threads raised from now on (process-wide; default <see cref="LatencyThreadPolicy.RealTime"/>).</summary>
    public static LatencyThreadPolicy Policy
    {
        get => s_policy;
        set => s_policy = Enum.IsDefined(value) ? value : throw new ArgumentOutOfRangeException(nameof(value), value, "not a latency thread policy");
    }

    /// <summary>Raises the calling thread as <see cref="Policy"/> says, falling back to nice -20 where real-time is not permitted.</summary>
    /// <returns>What the thread now runs at.</returns>
    public static LatencyThreadPriority RaiseCurrentThread() => Raise(s_policy);

    /// <summary>Raises the calling thread as <paramref name="policy"/> says (for tests; hosts use <see cref="RaiseCurrentThread"/>).</summary>
    /// <param name="policy">The policy to apply.</param>
    /// <returns>What the thread now runs at.</returns>
    public static LatencyThreadPriority Raise(LatencyThreadPolicy policy)
    {
        if (policy == LatencyThreadPolicy.Off || !OperatingSystem.IsLinux())
        {
            return LatencyThreadPriority.Unchanged;
        }

        if (policy == LatencyThreadPolicy.RealTime)
        {
            int priority = RealTimePriority;
            if (Interop.SchedSetScheduler(0, SchedFifo | SchedResetOnFork, ref priority) == 0)
            {
                return LatencyThreadPriority.RealTime;
            }
        }

        return Interop.SetPriority(PrioProcess, (uint)Interop.GetTid(), RaisedNice) == 0
            ? LatencyThreadPriority.Nice
            : LatencyThreadPriority.Unchanged;
    }

    /// <summary>Parses the config's spelling: <c>realtime</c>, <c>nice</c> or <c>off</c>.</summary>
    /// <param name="text">The value.</param>
    /// <param name="policy">The policy it names.</param>
    /// <returns>False for anything else.</returns>
    public static bool TryParse(string? text, out LatencyThreadPolicy policy)
    {
        switch (text)
        {
            case "realtime":
                policy = LatencyThreadPolicy.RealTime;
                return true;
            case "nice":
                policy = LatencyThreadPolicy.Nice;
                return true;
            case "off":
                policy = LatencyThreadPolicy.Off;
                return true;
            default:
                policy = default;
                return false;
        }
    }

    private static partial class Interop
    {
        // sched_setscheduler(2) with pid 0 changes the calling thread; its sched_param is one int.
        [LibraryImport("libc", EntryPoint = "sched_setscheduler", SetLastError = true)]
        internal static partial int SchedSetScheduler(int pid, int policy, ref int priority);

        [LibraryImport("libc", EntryPoint = "setpriority", SetLastError = true)]
        internal static partial int SetPriority(int which, uint who, int priority);

        [LibraryImport("libc", EntryPoint = "gettid")]
        internal static partial int GetTid();
    }
}
