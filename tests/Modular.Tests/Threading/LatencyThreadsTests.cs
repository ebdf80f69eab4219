using System.Runtime.InteropServices;
using Modular.Abstractions.Threading;
using Modular.Core.Memory;
using Modular.Core.Migration.Engine;
using Modular.Core.Migration.Postcopy;
using Modular.Tests.Migration.Postcopy;
using Modular.Tests.Support;

namespace Modular.Tests.Threading;

/// <summary>
/// The threads a page request travels through are raised as migration.latency-threads says:
/// real-time (SCHED_FIFO 1, reset on fork) where permitted, nice -20, or left alone; and the
/// destination's fault thread really is raised when it starts.
/// </summary>
[TestClass]
public sealed partial class LatencyThreadsTests
{
    private const int SchedOther = 0;
    private const int SchedFifo = 1;
    private const int SchedResetOnFork = 0x40000000;

    [TestMethod]
    public void RealTimeGivesADedicatedThreadFifoPriorityOneResetOnFork()
    {
        (LatencyThreadPriority result, int policy, int priority, int _) = OnNewThread(() => LatencyThreads.Raise(LatencyThreadPolicy.RealTime));
        if (result != LatencyThreadPriority.RealTime)
        {
            Assert.Inconclusive($"this process may not use SCHED_FIFO (no CAP_SYS_NICE or RLIMIT_RTPRIO 0); got {result}");
        }

        Assert.AreEqual(SchedFifo, policy & ~SchedResetOnFork, "SCHED_FIFO");
        Assert.AreEqual(SchedResetOnFork, policy & SchedResetOnFork, "children start as ordinary threads");
        Assert.AreEqual(1, priority, "the lowest real-time priority");
    }

    [TestMethod]
    public void NiceGivesNiceMinus20AndStaysWithTheFairScheduler()
    {
        (LatencyThreadPriority result, int policy, int _, int nice) = OnNewThread(() => LatencyThreads.Raise(LatencyThreadPolicy.Nice));
        if (result == LatencyThreadPriority.Unchanged)
        {
            Assert.Inconclusive("this process may not lower a nice value (no CAP_SYS_NICE)");
        }

        Assert.AreEqual(LatencyThreadPriority.Nice, result);
        Assert.AreEqual(SchedOther, policy);
        Assert.AreEqual(-20, nice);
    }

    [TestMethod]
    public void OffLeavesTheThreadAsItWas()
    {
        (LatencyThreadPriority result, int policy, int _, int nice) = OnNewThread(() => LatencyThreads.Raise(LatencyThreadPolicy.Off));
        Assert.AreEqual(LatencyThreadPriority.Unchanged, result);
        Assert.AreEqual(SchedOther, policy);
        Assert.AreEqual(ThreadNice.OfCurrentThread(), nice, "a new thread inherits the creator's nice value, and off keeps it");
    }

    [TestMethod]
    public void TheConfigSpellingsParse_OthersDoNot()
    {
        Assert.IsTrue(LatencyThreads.TryParse("realtime", out LatencyThreadPolicy policy));
        Assert.AreEqual(LatencyThreadPolicy.RealTime, policy);
        Assert.IsTrue(LatencyThreads.TryParse("nice", out policy));
        Assert.AreEqual(LatencyThreadPolicy.Nice, policy);
        Assert.IsTrue(LatencyThreads.TryParse("off", out policy));
        Assert.AreEqual(LatencyThreadPolicy.Off, policy);
        foreach (string? other in new[] { "RealTime", "fifo", "", null })
        {
            Assert.IsFalse(LatencyThreads.TryParse(other, out _), $"'{other}'");
        }

        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => LatencyThreads.Policy = (LatencyThreadPolicy)7);
    }

    [TestMethod]
    public void TheFaultThreadRunsRealTime()
    {
        if (OnNewThread(() => LatencyThreads.Raise(LatencyThreadPolicy.RealTime)).Result != LatencyThreadPriority.RealTime)
        {
            Assert.Inconclusive("this process may not use SCHED_FIFO (no CAP_SYS_NICE or RLIMIT_RTPRIO 0)");
        }

        Assert.AreEqual(LatencyThreadPolicy.RealTime, LatencyThreads.Policy, "the default");
        using GuestRam ram = GuestRam.Create(1 << 20);
        int policy = -1;
        using var read = new ManualResetEventSlim();
        var backend = new RecordingFaultBackend
        {
            // The fault thread's first read: note how it runs, then end it (no faults).
            OnReadFaults = () =>
            {
                policy = Interop.SchedGetScheduler(0);
                read.Set();
            },
        };
        using var postcopy = new PostcopyRam(ram, backend);
        var requests = new System.IO.Pipelines.Pipe();
        var faults = new PostcopyFaultThread(postcopy, new ReturnPathWriter(requests.Writer), ex => Assert.Fail(ex.Message));
        faults.Start();
        Assert.IsTrue(read.Wait(TimeSpan.FromSeconds(10)), "the fault thread read faults");
        faults.Stop();
        Assert.AreEqual(SchedFifo, policy & ~SchedResetOnFork, "the fault thread runs SCHED_FIFO");
    }

    /// <summary>Runs <paramref name="raise"/> on a thread of its own and reads how that thread runs afterwards.</summary>
    private static (LatencyThreadPriority Result, int Policy, int Priority, int Nice) OnNewThread(Func<LatencyThreadPriority> raise)
    {
        (LatencyThreadPriority, int, int, int) seen = default;
        var thread = new Thread(() =>
        {
            LatencyThreadPriority result = raise();
            int priority = 0;
            _ = Interop.SchedGetParam(0, ref priority);
            seen = (result, Interop.SchedGetScheduler(0), priority, ThreadNice.OfCurrentThread());
        });
        thread.Start();
        thread.Join();
        return seen;
    }

    private static partial class Interop
    {
        [LibraryImport("libc", EntryPoint = "sched_getscheduler")]
        internal static partial int SchedGetScheduler(int pid);

        [LibraryImport("libc", EntryPoint = "sched_getparam")]
        internal static partial int SchedGetParam(int pid, ref int priority);
    }
}
