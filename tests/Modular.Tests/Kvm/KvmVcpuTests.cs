using System.Diagnostics;
using System.Globalization;
using System.Text;
using Modular.Abstractions.Memory;
using Modular.Core.Interop;
using Modular.Core.Kvm;
using Modular.Core.Memory;
using Modular.Core.Vcpus;

namespace Modular.Tests.Kvm;

[TestClass]
public sealed class KvmVcpuTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(20);

    private static void WaitFor(Func<bool> condition, string what)
    {
        var clock = Stopwatch.StartNew();
        while (!condition())
        {
            if (clock.Elapsed > Patience)
            {
                Assert.Fail($"Timed out after {Patience.TotalSeconds} s waiting for {what}.");
            }

            Thread.Sleep(5);
        }
    }

    [TestMethod]
    public void CountingGuestRunsAndItsPortWritesReachTheHandler()
    {
        using KvmSystem kvm = TinyGuest.OpenKvmOrSkip();
        using var machine = new TinyMachine(kvm, TinyGuest.Counter);
        machine.Thread.Start();
        WaitFor(() => machine.Handler.PortWrites >= 300, "300 port writes");
        machine.Thread.Stop();

        Assert.AreEqual(VcpuRunState.Stopped, machine.Thread.State);
        Assert.AreEqual("stopped", machine.Thread.ExitReason);
        Assert.IsNull(machine.Thread.Failure);
        (ushort Port, byte[] Data)[] outs = machine.Handler.Outs.ToArray();
        Assert.IsTrue(outs.All(o => o.Port == TinyGuest.CounterPort && o.Data.Length == 1));
        for (int i = 0; i < 255; i++)
        {
            Assert.AreEqual((byte)(i + 1), outs[i].Data[0], $"port write {i}");
        }

        Assert.IsTrue(machine.ReadCounter() >= 300, $"counter in RAM is {machine.ReadCounter()}");
    }

    [TestMethod]
    public void StringIoIsDispatchedElementByElementThenHaltParksTheVcpu()
    {
        using KvmSystem kvm = TinyGuest.OpenKvmOrSkip();
        using var machine = new TinyMachine(kvm, TinyGuest.StringIo);
        machine.Ram.Write(new GuestPhysicalAddress(TinyGuest.MessageAddress), "HELLO"u8);
        machine.Handler.InValue = 0x42;
        machine.Thread.Start();

        Assert.IsTrue(machine.Handler.Halted.Wait(Patience), "the guest never executed HLT");
        WaitFor(() => machine.Thread.State == VcpuRunState.Halted, "state Halted");
        (ushort Port, byte[] Data)[] outs = machine.Handler.Outs.ToArray();
        string text = Encoding.ASCII.GetString(outs.Where(o => o.Port == 0x20).SelectMany(o => o.Data).ToArray());
        Assert.AreEqual("HELLO", text);
        Assert.IsTrue(outs.Where(o => o.Port == 0x20).All(o => o.Data.Length == 1));
        CollectionAssert.AreEqual(new ushort[] { 0x21 }, machine.Handler.InPorts);
        Assert.AreEqual((ushort)0x22, outs[^1].Port);
        Assert.AreEqual((byte)0x42, outs[^1].Data[0], "the IN value did not reach AL");
    }

    [TestMethod]
    public void TripleFaultIsReportedWithAClearReason()
    {
        using KvmSystem kvm = TinyGuest.OpenKvmOrSkip();
        using var machine = new TinyMachine(kvm, [0x0F, 0x0B]); // ud2 with no IDT
        machine.Thread.Start();
        Assert.IsTrue(machine.Handler.ShutDown.Wait(Patience), "no shutdown reported");
        machine.Thread.Join(Patience);
        Assert.AreEqual(VcpuRunState.Stopped, machine.Thread.State);
        StringAssert.Contains(machine.Handler.ShutdownReason, "vCPU 0: the guest triple-faulted (KVM_EXIT_SHUTDOWN)");
        Assert.AreEqual(machine.Handler.ShutdownReason, machine.Thread.ExitReason);
    }

    [TestMethod]
    public void KvmDirtyLogShowsThePageTheGuestWroteAndVmmWritesAreMerged()
    {
        using KvmSystem kvm = TinyGuest.OpenKvmOrSkip();
        using var machine = new TinyMachine(kvm, TinyGuest.Counter);
        RamBlock block = machine.Ram.GetBlock(GuestRam.MainBlockName);
        var dirty = new DirtyBitmap(block.PageCount);
        machine.Ram.SyncDirtyBitmap(block, dirty); // the code page the VMM wrote
        Assert.IsTrue(dirty.Test(TinyGuest.CodeAddress / 4096), "VMM write of the code page not in the bitmap");
        dirty.ClearAll();

        machine.Thread.Start();
        WaitFor(() => machine.Handler.PortWrites >= 50, "50 port writes");
        machine.Thread.Pause();
        machine.Ram.Write(new GuestPhysicalAddress(0x7000), [1, 2, 3]);
        machine.Ram.SyncDirtyBitmap(block, dirty);
        CollectionAssert.AreEqual(new long[] { 5, 7 }, dirty.EnumerateSet().ToArray(), "dirty pages after the guest ran");

        dirty.ClearAll();
        Assert.AreEqual(0, machine.Ram.SyncDirtyBitmap(block, dirty), "pages still dirty with the vCPU paused: the log was not cleared");

        machine.Thread.Resume();
        long before = machine.Handler.PortWrites;
        WaitFor(() => machine.Handler.PortWrites >= before + 50, "50 more port writes");
        machine.Thread.Pause();
        machine.Ram.SyncDirtyBitmap(block, dirty);
        CollectionAssert.AreEqual(new long[] { 5 }, dirty.EnumerateSet().ToArray(), "page 5 not re-protected and logged again");

        // The last sync of a migration does not re-protect: the same page is reported again.
        dirty.ClearAll();
        machine.Thread.Resume();
        before = machine.Handler.PortWrites;
        WaitFor(() => machine.Handler.PortWrites >= before + 50, "50 more port writes");
        machine.Thread.Pause();
        machine.Ram.SyncDirtyBitmap(block, dirty, rearm: false);
        CollectionAssert.AreEqual(new long[] { 5 }, dirty.EnumerateSet().ToArray(), "page 5 written again");
        dirty.ClearAll();
        machine.Ram.SyncDirtyBitmap(block, dirty, rearm: false);
        CollectionAssert.AreEqual(new long[] { 5 }, dirty.EnumerateSet().ToArray(), "without re-protection KVM reports page 5 until it is cleared");
        dirty.ClearAll();
        machine.Ram.SyncDirtyBitmap(block, dirty);
        dirty.ClearAll();
        Assert.AreEqual(0, machine.Ram.SyncDirtyBitmap(block, dirty), "a normal sync clears it");
    }

    [TestMethod]
    public void RamAboveThreeGibIsTwoKvmSlotsWhoseDirtyLogsMergeByBlockOffset()
    {
        using KvmSystem kvm = TinyGuest.OpenKvmOrSkip();
        using var machine = new TinyMachine(kvm, TinyGuest.Counter, ramSize: (3UL << 30) + (64UL << 20));
        RamBlock block = machine.Ram.GetBlock(GuestRam.MainBlockName);
        Assert.AreEqual(2, block.Regions.Count);
        var dirty = new DirtyBitmap(block.PageCount);
        machine.Ram.SyncDirtyBitmap(block, dirty);
        dirty.ClearAll();

        machine.Thread.Start();
        WaitFor(() => machine.Handler.PortWrites >= 50, "50 port writes");
        machine.Thread.Pause();
        machine.Ram.Write(new GuestPhysicalAddress((4UL << 30) + 0x3000), [9]);
        machine.Ram.SyncDirtyBitmap(block, dirty);
        long highPage = (long)(((3UL << 30) + 0x3000) / 4096);
        CollectionAssert.AreEqual(new long[] { 5, highPage }, dirty.EnumerateSet().ToArray());
    }

    [TestMethod]
    public void PauseIsPromptAndTheGuestContinuesAfterResume()
    {
        using KvmSystem kvm = TinyGuest.OpenKvmOrSkip();
        using var machine = new TinyMachine(kvm, TinyGuest.Counter);
        machine.Handler.KeepOuts = false;
        machine.Thread.Start();
        WaitFor(() => machine.Handler.PortWrites >= 100, "100 port writes");

        for (int round = 0; round < 5; round++)
        {
            var clock = Stopwatch.StartNew();
            machine.Thread.Pause();
            clock.Stop();
            Assert.AreEqual(VcpuRunState.Paused, machine.Thread.State);
            Assert.IsTrue(clock.ElapsedMilliseconds < 500, $"Pause took {clock.ElapsedMilliseconds} ms");
            Console.WriteLine($"Pause {round}: {clock.Elapsed.TotalMilliseconds:0.000} ms");

            long frozen = machine.Handler.PortWrites;
            uint counter = machine.ReadCounter();
            KvmRegs regs = machine.Vcpu.GetRegs();
            Thread.Sleep(50);
            Assert.AreEqual(frozen, machine.Handler.PortWrites, "the guest ran while paused");
            AssertConsistentLoopState(regs, counter, machine.Handler.LastCounterByte);

            machine.Thread.Resume();
            WaitFor(() => machine.Handler.PortWrites > frozen + 20, "the guest to continue after Resume");
            Assert.IsTrue(machine.ReadCounter() > counter);
        }
    }

    [TestMethod]
    public void PauseKicksAGuestThatNeverExitsOnItsOwn()
    {
        using KvmSystem kvm = TinyGuest.OpenKvmOrSkip();
        using var machine = new TinyMachine(kvm, TinyGuest.SilentCounter);
        machine.Thread.Start();
        WaitFor(() => machine.ReadCounter() > 1000, "the counter in RAM to pass 1000");

        for (int round = 0; round < 3; round++)
        {
            var clock = Stopwatch.StartNew();
            machine.Thread.Pause();
            clock.Stop();
            Console.WriteLine($"Pause of a silent guest {round}: {clock.Elapsed.TotalMilliseconds:0.000} ms");
            Assert.IsTrue(clock.ElapsedMilliseconds < 500, $"Pause took {clock.ElapsedMilliseconds} ms");
            uint frozen = machine.ReadCounter();
            Thread.Sleep(50);
            Assert.AreEqual(frozen, machine.ReadCounter(), "the guest ran while paused");
            Assert.AreEqual(0, machine.Handler.PortWrites);

            machine.Thread.Resume();
            WaitFor(() => machine.ReadCounter() > frozen + 1000, "the guest to continue after Resume");
        }

        var stopClock = Stopwatch.StartNew();
        machine.Thread.Stop();
        Assert.IsTrue(stopClock.ElapsedMilliseconds < 500, $"Stop took {stopClock.ElapsedMilliseconds} ms");
        Assert.AreEqual("stopped", machine.Thread.ExitReason);
    }

    /// <summary>
    /// Auto-converge's CPU throttle on a real vCPU whose guest never exits on its own: at 90 % the
    /// vCPU thread gets a small fraction of the CPU it had (measured as its own CPU time, not as
    /// wall-clock progress), the guest still runs, it stays Running to the VMM, and a Pause in the
    /// middle of a long throttle sleep returns at once.
    /// </summary>
    [TestMethod]
    public void CpuThrottle_TakesMostOfAVcpusTime_YetItRuns_AndPauseCutsTheSleepShort()
    {
        using KvmSystem kvm = TinyGuest.OpenKvmOrSkip();
        using var machine = new TinyMachine(kvm, TinyGuest.SilentCounter);
        using var throttle = new Modular.Core.Machine.CpuThrottle(machine.Thread.Throttle);
        machine.Thread.Start();
        WaitFor(() => machine.ReadCounter() > 1000, "the counter in RAM to pass 1000");
        int tid = machine.Thread.KernelThreadId;

        double free = CpuShare(tid, TimeSpan.FromMilliseconds(600));
        throttle.Set(90);
        Thread.Sleep(50);
        uint before = machine.ReadCounter();
        double throttled = CpuShare(tid, TimeSpan.FromMilliseconds(600));
        Console.WriteLine($"vCPU thread's share of a CPU: {free:P0} free, {throttled:P0} at 90 % ({throttle.Slices} slices)");
        Assert.IsGreaterThan(0.5, free, "the silent guest keeps its vCPU busy");
        Assert.IsLessThan(free * 0.5, throttled, "at 90 % the vCPU thread runs a small part of the time");
        Assert.IsGreaterThan(before, machine.ReadCounter(), "the guest still runs while throttled");
        Assert.AreEqual(VcpuRunState.Running, machine.Thread.State);

        throttle.Set(99); // 990 ms asleep in every second
        Thread.Sleep(100);
        var clock = Stopwatch.StartNew();
        machine.Thread.Pause();
        Assert.IsLessThan(300L, clock.ElapsedMilliseconds, "Pause ends a throttle's sleep");
        Assert.AreEqual(VcpuRunState.Paused, machine.Thread.State);
        throttle.Stop();
        machine.Thread.Resume();
        uint resumed = machine.ReadCounter();
        WaitFor(() => machine.ReadCounter() > resumed + 1000, "the guest to run on after the throttle stopped");
    }

    // The thread's CPU time (user + system, from /proc) over a wall-clock window, as a share of one CPU.
    private static double CpuShare(int tid, TimeSpan window)
    {
        static long Ticks(int tid)
        {
            string stat = File.ReadAllText($"/proc/self/task/{tid}/stat");
            string[] fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            return long.Parse(fields[11], System.Globalization.CultureInfo.InvariantCulture) + long.Parse(fields[12], System.Globalization.CultureInfo.InvariantCulture);
        }

        long start = Ticks(tid);
        var clock = Stopwatch.StartNew();
        Thread.Sleep(window);
        long used = Ticks(tid) - start;
        return used / 100.0 / clock.Elapsed.TotalSeconds; // USER_HZ is 100 on Linux
    }

    [TestMethod]
    public void CapturedStateMovesARunningGuestIntoAFreshVmAndItContinuesExactly()
    {
        using KvmSystem kvm = TinyGuest.OpenKvmOrSkip();
        using var source = new TinyMachine(kvm, TinyGuest.Counter);
        source.Thread.Start();
        WaitFor(() => source.Handler.PortWrites >= 500, "500 port writes");
        source.Thread.Pause();

        VcpuState captured = source.Vcpu.CaptureState();
        KvmClockData clock = source.Vm.GetClock();
        byte[] bytes = new byte[captured.SerializedSize];
        captured.WriteTo(bytes);
        VcpuState state = VcpuState.ReadFrom(bytes);
        uint counter = source.ReadCounter();
        // The pause may land between "inc eax" and "mov [edi], eax": RAX is the RAM counter or one more.
        uint rax = (uint)state.Regs.Rax;
        Assert.IsTrue(rax == counter || rax == counter + 1, $"RAX {rax} does not match the RAM counter {counter}");
        Assert.IsTrue(state.Msrs.Length > 0, "no MSRs captured");
        Assert.IsTrue(state.Cpuid.Length > 0, "no CPUID captured");
        source.Thread.Stop();

        using var destination = new TinyMachine(kvm, []);
        RamBlock from = source.Ram.GetBlock(GuestRam.MainBlockName);
        RamBlock to = destination.Ram.GetBlock(GuestRam.MainBlockName);
        byte[] page = new byte[RamBlock.TargetPageSize];
        for (ulong offset = 0; offset < from.Size; offset += (ulong)page.Length)
        {
            from.CopyOut(offset, page);
            to.CopyIn(offset, page);
        }

        destination.Vm.SetClock(clock);
        IReadOnlyList<uint> skipped = destination.Vcpu.RestoreState(state);
        Console.WriteLine($"MSRs captured: {state.Msrs.Length}, skipped on restore: {string.Join(", ", skipped.Select(i => "0x" + i.ToString("x", CultureInfo.InvariantCulture)))}; xsave {state.Xsave.Length} bytes; CPUID entries {state.Cpuid.Length}");
        Assert.IsTrue(skipped.Count <= 2, "skipped MSRs: " + string.Join(", ", skipped.Select(i => "0x" + i.ToString("x", CultureInfo.InvariantCulture))));
        Assert.AreEqual(state.Regs.Rip, destination.Vcpu.GetRegs().Rip);

        destination.Thread.Start();
        WaitFor(() => destination.Handler.PortWrites >= 100, "the moved guest to run");
        destination.Thread.Pause();
        // Exact continuation: the destination's first port write follows the source's last one,
        // neither repeating it (an OUT replayed) nor skipping one.
        Assert.AreEqual((source.Handler.LastCounterByte + 1) & 0xFF, destination.Handler.FirstCounterByte, "the moved guest did not continue from where it stopped");
        Assert.IsTrue(destination.ReadCounter() >= counter + 100, $"counter {destination.ReadCounter()} did not grow from {counter}");
    }

    /// <summary>
    /// A paused counting guest stopped between two instructions of its loop, with every instruction
    /// before it complete (in particular an OUT is neither half-done nor to be replayed).
    /// </summary>
    private static void AssertConsistentLoopState(KvmRegs regs, uint counterInRam, int lastPortByte)
    {
        uint offset = (uint)regs.Rip - TinyGuest.CodeAddress;
        uint eax = (uint)regs.Rax;
        switch (offset)
        {
            case 7 or 12: // after OUT: all three agree
                Assert.AreEqual(counterInRam, eax, "EAX vs RAM after OUT");
                Assert.AreEqual((int)(counterInRam & 0xFF), lastPortByte, "last port byte after OUT");
                break;
            case 8: // after INC, before MOV
                Assert.AreEqual(counterInRam + 1, eax, "EAX vs RAM before MOV");
                Assert.AreEqual((int)(counterInRam & 0xFF), lastPortByte, "last port byte before MOV");
                break;
            case 10: // after MOV, before OUT
                Assert.AreEqual(counterInRam, eax, "EAX vs RAM before OUT");
                Assert.AreEqual((int)((counterInRam - 1) & 0xFF), lastPortByte, "last port byte before OUT");
                break;
            default:
                Assert.Fail($"paused at RIP 0x{regs.Rip:x}, not an instruction boundary of the loop");
                break;
        }
    }

    [TestMethod]
    public void TheKickSignalIsNeitherCaughtNorIgnoredByTheRuntime()
    {
        int signal = VcpuKickSignal.Number;
        Assert.IsTrue(signal > 34 && signal < 64, $"kick signal {signal}");
        foreach (string line in File.ReadAllLines("/proc/self/status").Where(l => l.StartsWith("SigCgt:", StringComparison.Ordinal) || l.StartsWith("SigIgn:", StringComparison.Ordinal)))
        {
            ulong mask = ulong.Parse(line.Split(':')[1].Trim(), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
            Assert.AreEqual(0UL, mask & (1UL << (signal - 1)), $"signal {signal} is in {line}");
        }
    }

    [TestMethod]
    public void AMissingKvmDeviceSaysSoAndSuggestsTheSyntheticAccelerator()
    {
        var error = Assert.ThrowsExactly<KvmUnavailableException>(() => KvmSystem.Open("/dev/no-such-kvm"));
        StringAssert.StartsWith(error.Message, "/dev/no-such-kvm does not exist: this host has no KVM");
        StringAssert.Contains(error.Message, "machine.accelerator: \"synthetic\"");
    }
}
