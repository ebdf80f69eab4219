using Modular.Core.Memory;
using Modular.Core.Migration.Postcopy;

namespace Modular.Tests.Migration.Postcopy;

/// <summary>
/// postcopy-vcpu-blocktime: a requested page's fault-to-placement time counts for the vCPU whose
/// thread faulted on it (the fault backend names the thread), not for other threads.
/// </summary>
[TestClass]
public sealed class VcpuBlocktimeTests
{
    private const int Vcpu0Thread = 4001;
    private const int Vcpu1Thread = 4002;

    [TestMethod]
    public void TheFaultingVcpuGetsTheBlocktime_AnotherThreadOnlyTheLatency()
    {
        using GuestRam ram = GuestRam.Create(1 << 20);
        var backend = new RecordingFaultBackend();
        using var postcopy = new PostcopyRam(ram, backend, () => [Vcpu0Thread, Vcpu1Thread]);
        RamBlock block = ram.Blocks[0];
        postcopy.Arm();

        // vCPU 1 faults on page 3 and waits about 20 ms; a device load (another thread) on page 5.
        Assert.AreEqual(FaultOutcome.NeedsRequest, postcopy.OnFault(block.HostAddress + 3 * 4096 + 17, Vcpu1Thread, out _, out ulong offset));
        Assert.AreEqual(FaultOutcome.NeedsRequest, postcopy.OnFault(block.HostAddress + 5 * 4096, 999, out _, out ulong other));
        Thread.Sleep(20);
        postcopy.Place(block, offset, new byte[4096], isZero: false);
        postcopy.Place(block, other, new byte[4096], isZero: false);

        long[] perVcpu = postcopy.Latency.VcpuBlocktimeMs();
        Assert.HasCount(2, perVcpu);
        Assert.AreEqual(0L, perVcpu[0], "vCPU 0 never waited");
        Assert.IsGreaterThanOrEqualTo(19L, perVcpu[1], "vCPU 1 waited about 20 ms for page 3");
        Assert.AreEqual(2L, postcopy.Latency.Count, "both requests count in the latency distribution");
        Assert.IsGreaterThanOrEqualTo(perVcpu[1] * 2 - 2, postcopy.Latency.TotalMs, "the device load's wait is in the latency total");
    }

    [TestMethod]
    public void ThreadIdsOfVcpusStartedLaterAreFetchedAgain()
    {
        using GuestRam ram = GuestRam.Create(1 << 20);
        int[] ids = [0];
        using var postcopy = new PostcopyRam(ram, new RecordingFaultBackend(), () => (int[])ids.Clone());
        RamBlock block = ram.Blocks[0];
        postcopy.Arm();

        // The vCPU thread starts after POSTCOPY_ADVISE (at RUN): its id is learnt at its first fault.
        ids[0] = Vcpu0Thread;
        postcopy.OnFault(block.HostAddress, Vcpu0Thread, out _, out ulong offset);
        Thread.Sleep(5);
        postcopy.Place(block, offset, new byte[4096], isZero: false);
        Assert.IsGreaterThanOrEqualTo(4L, postcopy.Latency.VcpuBlocktimeMs()[0]);
    }
}
