using Modular.Core.Accel;
using Modular.Core.Config;
using Modular.Core.Interop;
using Modular.Core.Machine;
using Modular.Core.Plugins;
using Modular.Core.Qmp;
using Modular.Core.Vcpus;
using Modular.Core.Verification;
using Modular.Tests.Support;
using static Modular.Tests.Machine.MachineTesting;

namespace Modular.Tests.Machine;

/// <summary>
/// The A/B guest on a real KVM machine built from a config: it prints A then B's, the RAM check
/// passes whenever it is stopped, and stop/cont keeps the invariant while the guest goes on.
/// </summary>
[TestClass]
public sealed class AbGuestRunTests : MachineTestBase
{
    [TestMethod]
    public void AbGuestRunsAndStopContKeepsTheRamInvariant()
    {
        RequireKvm();
        string serial = Path.Combine(Dir, "serial.log");
        ModularConfig config = ConfigFor(GuestPath("ab-guest.elf"), "128M", serial);
        using VirtualMachine machine = VirtualMachine.Create(config, Plugins, MachineStartMode.Boot);
        var events = new List<string>();
        machine.EventRaised += (name, _) => { lock (events) { events.Add(name); } };
        StringAssert.StartsWith(machine.AcceleratorDescription, "KVM (/dev/kvm");
        Assert.AreEqual(QmpRunState.Prelaunch, machine.RunState);

        machine.Start();
        Assert.AreEqual(QmpRunState.Running, machine.RunState);
        WaitForBs(serial, 1, Patience);
        machine.Stop();
        Assert.AreEqual(QmpRunState.Paused, machine.RunState);
        AbRamCheckResult first = AssertAbRam(machine);
        byte firstByte = ByteAt1MiB(machine);
        Assert.AreEqual(first.FirstByte, firstByte);
        Assert.AreNotEqual(0, firstByte, "the guest has written the page at 1 MiB");
        int bsAtStop = ReadSerial(serial).Count(c => c == 'B');

        // While stopped nothing changes.
        Thread.Sleep(300);
        Assert.AreEqual(firstByte, ByteAt1MiB(machine), "a stopped guest does not touch RAM");

        machine.Resume();
        Assert.AreEqual(QmpRunState.Running, machine.RunState);
        WaitForBs(serial, bsAtStop + 1, Patience);
        machine.Stop();
        AbRamCheckResult second = AssertAbRam(machine);
        Assert.AreNotEqual(firstByte, second.FirstByte, "the first byte at 1 MiB advanced after cont");

        string output = ReadSerial(serial);
        Assert.AreEqual(1, output.Count(c => c == 'A'), output);
        Assert.IsTrue(output.Skip(1).All(c => c == 'B'), output);
        Assert.IsFalse(machine.Exited.IsCompleted, "the A/B guest never exits by itself");
        lock (events)
        {
            CollectionAssert.AreEqual(new[] { "RESUME", "STOP", "RESUME", "STOP" }, events);
        }
    }

    [TestMethod]
    public void VcpuThreadsPreparedAheadWaitWithoutRunningTheGuest_AndStartItLater()
    {
        RequireKvm();
        string serial = Path.Combine(Dir, "serial.log");
        using VirtualMachine machine = VirtualMachine.Create(ConfigFor(GuestPath("ab-guest.elf"), "64M", serial), Plugins, MachineStartMode.Boot);
        Assert.AreEqual(0, machine.Accelerator.VcpuThreadIds()[0], "no vCPU thread before anything starts");

        machine.PrepareIncomingStart();
        machine.PrepareIncomingStart(); // idempotent
        Assert.AreNotEqual(0, machine.Accelerator.VcpuThreadIds()[0], "vCPU 0's thread exists, parked");
        Thread.Sleep(500);
        Assert.AreEqual(string.Empty, ReadSerial(serial), "a parked vCPU runs no guest code");
        Assert.AreEqual(QmpRunState.Prelaunch, machine.RunState);
        Assert.IsFalse(machine.Accelerator.IsRunning);

        machine.Start();
        Assert.AreEqual(QmpRunState.Running, machine.RunState);
        WaitForBs(serial, 1, Patience);
        machine.Stop();
        AssertAbRam(machine);
        StringAssert.StartsWith(ReadSerial(serial), "AB");
    }

    [TestMethod]
    public void RehearsingTheStop_ParksARunningGuestOnceAndRunsItOn_AndLeavesAStoppedOneStopped()
    {
        RequireKvm();
        string serial = Path.Combine(Dir, "serial.log");
        using VirtualMachine machine = VirtualMachine.Create(ConfigFor(GuestPath("ab-guest.elf"), "64M", serial), Plugins, MachineStartMode.Boot);
        var events = new List<string>();
        machine.EventRaised += (name, _) => { lock (events) { events.Add(name); } };
        var kvm = (Modular.Core.Accel.KvmAccelerator)machine.Accelerator;

        machine.Start();
        WaitForBs(serial, 1, Patience);
        int parks = kvm.VcpuParks()[0];
        AbRamCheckResult? whileStopped = null;
        machine.RehearseStop(() =>
        {
            // What the rehearsal runs sees a stopped guest: the RAM stays put while it looks.
            whileStopped = AssertGuestStaysPut(machine, "no guest code runs during the rehearsal's work");
            Assert.IsFalse(machine.Accelerator.IsRunning);
        });
        Assert.IsNotNull(whileStopped, "the rehearsal ran its work");
        Assert.AreEqual(parks + 1, kvm.VcpuParks()[0], "the rehearsal kicked the vCPU out of the guest and parked it once");
        Assert.AreEqual(QmpRunState.Running, machine.RunState);
        Assert.IsTrue(machine.Accelerator.IsRunning);
        int bs = ReadSerial(serial).Count(c => c == 'B');
        WaitForBs(serial, bs + 1, Patience); // and the guest runs on

        machine.Stop();
        byte stoppedAt = ByteAt1MiB(machine);
        parks = kvm.VcpuParks()[0];
        machine.RehearseStop();
        Thread.Sleep(300);
        Assert.AreEqual(QmpRunState.Paused, machine.RunState);
        Assert.AreEqual(parks, kvm.VcpuParks()[0], "a stopped guest is not touched");
        Assert.AreEqual(stoppedAt, ByteAt1MiB(machine), "a stopped guest stays stopped");
        AssertAbRam(machine);
        lock (events)
        {
            CollectionAssert.AreEqual(new[] { "RESUME", "STOP" }, events, "the rehearsal changes no run state and emits nothing");
        }
    }

    [TestMethod]
    public void AWatchedResume_NotesWhenTheVcpuThreadLeftItsPark_OnceAndOnlyAfterTheResume()
    {
        // What x-modular-vcpus-ran-after-package-ms reads: a resume marks the vCPU Running at once,
        // but the guest runs again only when its thread has left the park.
        // Two vCPUs: vCPU 1 (an application processor) never starts, and must not keep the moment
        // from being known. GuestRanSinceResumeWatch (the postcopy listen thread's priority waits
        // for it) turns true at the same moment.
        using VirtualMachine machine = BootAbGuest(out string serial, vcpus: 2);
        machine.Stop();
        Assert.IsNull(machine.LastVcpuResumedAt(), "nothing was watched yet");

        machine.WatchVcpuResumes();
        Thread.Sleep(50);
        Assert.IsNull(machine.LastVcpuResumedAt(), "a stopped guest's thread stays parked");
        Assert.IsFalse(machine.GuestRanSinceResumeWatch(), "a stopped guest's thread stays parked");
        long before = System.Diagnostics.Stopwatch.GetTimestamp();
        machine.Resume();
        long? resumed = null;
        for (var wait = System.Diagnostics.Stopwatch.StartNew(); resumed is null && wait.Elapsed < Patience; Thread.Sleep(1))
        {
            resumed = machine.LastVcpuResumedAt();
        }

        Assert.IsNotNull(resumed, "the resumed vCPU thread left its park (the never-started vCPU 1 left out)");
        Assert.IsTrue(machine.GuestRanSinceResumeWatch());
        Assert.IsGreaterThanOrEqualTo(before, resumed.Value, "noted after the resume, not before");
        int bs = ReadSerial(serial).Count(c => c == 'B');
        WaitForBs(serial, bs + 1, Patience);

        machine.Stop();
        machine.Resume();
        Thread.Sleep(50);
        Assert.AreEqual(resumed, machine.LastVcpuResumedAt(), "a later resume, unwatched, leaves the noted moment alone");
    }

    [TestMethod]
    public void AStopRightAfterACont_StopsTheGuest_EvenBeforeItsVcpuThreadWokeUp()
    {
        // cont wakes the parked vCPU thread, which takes a moment to run; a stop in that moment
        // must still stop it (it once returned at once and let the guest run on: a postcopy switch
        // right after a rehearsed stop then saved a running vCPU's state, and waited for it).
        using VirtualMachine machine = BootAbGuest(out string serial);
        machine.Stop();
        for (int i = 0; i < 20; i++)
        {
            machine.Resume();
            machine.Stop();
            AssertGuestStaysPut(machine, $"round {i}: the guest ran on after stop returned");
            Assert.AreEqual(QmpRunState.Paused, machine.RunState);
            Assert.IsFalse(machine.Accelerator.IsRunning);
        }

        AssertAbRam(machine);
    }

    [TestMethod]
    public unsafe void ALendingPause_MovesAVcpuThatWaitsForACore_ToThePausersCpu_AndGivesItsMaskBack()
    {
        // ParkWait.LendCpu, as the postcopy switch pauses: this thread on CPU 0, a spinning thread
        // holding CPU 1, and the vCPU allowed on both, so that at a kick it is often waiting for a
        // core. Then it must be moved to CPU 0, park, and get both CPUs back.
        if (Environment.ProcessorCount < 2)
        {
            Assert.Inconclusive($"needs two CPUs; this host has {Environment.ProcessorCount}");
        }

        using VirtualMachine machine = BootAbGuest(out string serial);
        var kvm = (KvmAccelerator)machine.Accelerator;
        int vcpu = kvm.VcpuThreadIds()[0];
        ulong both = 0b11;
        Assert.AreEqual(0, Libc.SchedSetaffinity(vcpu, sizeof(ulong), &both));
        using var stopSpinning = new CancellationTokenSource();
        var spinner = new Thread(() =>
        {
            ulong cpu1 = 0b10;
            _ = Libc.SchedSetaffinity(0, sizeof(ulong), &cpu1);
            while (!stopSpinning.IsCancellationRequested)
            {
                Thread.SpinWait(1000);
            }
        }) { IsBackground = true };
        ulong cpu0 = 0b01;
        ulong mine = 0;
        Assert.AreEqual(0, Libc.SchedGetaffinity(0, sizeof(ulong), &mine));
        Assert.AreEqual(0, Libc.SchedSetaffinity(0, sizeof(ulong), &cpu0));
        spinner.Start();
        try
        {
            for (int round = 0; round < 40 && kvm.VcpuCpuLends()[0] == 0; round++)
            {
                machine.StopAs(QmpRunState.Paused, ParkWait.LendCpu);
                Assert.IsFalse(machine.Accelerator.IsRunning, $"round {round}: paused");
                ulong mask = 0;
                Assert.AreEqual(0, Libc.SchedGetaffinity(vcpu, sizeof(ulong), &mask));
                Assert.AreEqual(both, mask & 0b11, $"round {round}: the vCPU thread has both CPUs again");
                AssertGuestStaysPut(machine, $"round {round}: the guest ran on after the pause returned");
                machine.Resume();
                Thread.Sleep(3);
            }

            Assert.IsGreaterThan(0, kvm.VcpuCpuLends()[0], "in 40 pauses the vCPU never waited for a core: the lending path was not taken");
        }
        finally
        {
            stopSpinning.Cancel();
            spinner.Join();
            _ = Libc.SchedSetaffinity(0, sizeof(ulong), &mine);
        }

        int bs = ReadSerial(serial).Count(c => c == 'B');
        WaitForBs(serial, bs + 1, Patience);
        machine.Stop();
        AssertAbRam(machine);
    }

    /// <summary>Boots the 64 MiB A/B guest on KVM (Inconclusive without it) and waits for its first 'B' on <paramref name="serial"/>.</summary>
    private VirtualMachine BootAbGuest(out string serial, int vcpus = 1)
    {
        RequireKvm();
        serial = Path.Combine(Dir, "serial.log");
        VirtualMachine machine = VirtualMachine.Create(
            ConfigFor(GuestPath("ab-guest.elf"), "64M", serial, ("machine.vcpus", vcpus.ToString(System.Globalization.CultureInfo.InvariantCulture))),
            Plugins,
            MachineStartMode.Boot);
        try
        {
            machine.Start();
            WaitForBs(serial, 1, Patience);
            return machine;
        }
        catch
        {
            machine.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Asserts that the A/B guest's pass stays where it is for 30 ms (running, it writes about 250
    /// pages a millisecond here), and returns where it is.
    /// </summary>
    private static AbRamCheckResult AssertGuestStaysPut(VirtualMachine machine, string message)
    {
        AbRamCheckResult before = AssertAbRam(machine);
        Thread.Sleep(30);
        AbRamCheckResult after = AssertAbRam(machine);
        Assert.AreEqual((before.FirstByte, before.StepAddress), (after.FirstByte, after.StepAddress), message);
        return before;
    }

    [TestMethod]
    public void FillGuestHaltsWithEveryPageFilled()
    {
        RequireKvm();
        string serial = Path.Combine(Dir, "serial.log");
        using VirtualMachine machine = VirtualMachine.Create(ConfigFor(GuestPath("fill-halt.elf"), "64M", serial), Plugins, MachineStartMode.Boot);

        machine.Start();
        WaitUntil(() => ReadSerial(serial) == "F", Patience, () => $"'F' in {serial}; it holds '{ReadSerial(serial)}'");
        machine.Stop();

        AbRamCheckResult result = AssertAbRam(machine);
        Assert.AreEqual((byte)0x5a, result.FirstByte, "fill-halt writes FILL_VALUE 0x5a");
        Assert.IsNull(result.StepAddress, "a halted fill guest leaves no step");
        Assert.AreEqual((64UL << 20) - (1UL << 20), result.PagesChecked * 4096);
        Assert.IsNull(machine.FatalError);
        Assert.IsFalse(machine.Exited.IsCompleted, "a halted guest stays halted until quit");
    }

    [TestMethod]
    public void ExitGuestEndsTheMachineWithItsExitCode()
    {
        RequireKvm();
        string serial = Path.Combine(Dir, "serial.log");
        using VirtualMachine machine = VirtualMachine.Create(ConfigFor(GuestPath("exit-guest.elf"), "64M", serial), Plugins, MachineStartMode.Boot);
        var events = new List<string>();
        machine.EventRaised += (name, data) => { lock (events) { events.Add(name + (data is null ? string.Empty : " " + data.ToJsonString())); } };

        machine.Start();
        Assert.IsTrue(machine.Exited.Wait(Patience), "the exit guest writes to port 0xf4");

        Assert.AreEqual(67, machine.Exited.Result);
        Assert.AreEqual(QmpRunState.Shutdown, machine.RunState);
        lock (events)
        {
            CollectionAssert.Contains(events, """SHUTDOWN {"guest":true,"reason":"guest-shutdown"}""");
        }
    }
}
