using Modular.Core.Machine;
using Modular.Core.Plugins;
using Modular.Core.Qmp;
using Modular.Core.Verification;
using Modular.Tests.Support;
using static Modular.Tests.Machine.MachineTesting;

namespace Modular.Tests.Machine;

/// <summary>
/// Saving a running A/B guest's complete state (vCPU, clock, devices, RAM) and restoring it into a
/// fresh machine in the same process continues the guest there, as migration will.
/// </summary>
[TestClass]
public sealed class SaveRestoreTests : MachineTestBase
{
    [TestMethod]
    public void AbGuestContinuesOnAFreshMachineAfterSaveAndRestore()
    {
        RequireKvm();
        string serial1 = Path.Combine(Dir, "serial1.log");
        string serial2 = Path.Combine(Dir, "serial2.log");

        MachineSnapshot snapshot;
        byte sourceByte;
        using (VirtualMachine source = VirtualMachine.Create(ConfigFor(GuestPath("ab-guest.elf"), "64M", serial1), Plugins, MachineStartMode.Boot))
        {
            source.Start();
            WaitForBs(serial1, 2, Patience);
            source.Stop();
            AssertAbRam(source);
            sourceByte = ByteAt1MiB(source);
            snapshot = MachineSnapshot.Take(source);
        }

        CollectionAssert.AreEqual(
            new[] { "serial/0", "debug-exit/0", "cpu/0", "kvmclock/0" },
            snapshot.Sections.Select(s => s.Name).ToArray());

        using VirtualMachine destination = VirtualMachine.Create(ConfigFor(null, "64M", serial2), Plugins, MachineStartMode.Incoming);
        var events = new List<string>();
        destination.EventRaised += (name, _) => { lock (events) { events.Add(name); } };
        Assert.AreEqual(QmpRunState.InMigrate, destination.RunState);
        snapshot.RestoreInto(destination);
        Assert.AreEqual(sourceByte, ByteAt1MiB(destination), "RAM arrived before the guest runs");

        Assert.IsTrue(destination.CompleteIncoming(), "an incoming machine not started paused runs the guest");
        Assert.AreEqual(QmpRunState.Running, destination.RunState);

        // The guest goes on where it was: no new 'A' (that would be a reboot), only B's.
        WaitUntil(() => ReadSerial(serial2).Length >= 2, Patience, () => $"two 'B's in {serial2}; it holds '{ReadSerial(serial2)}'");
        destination.Stop();
        string output = ReadSerial(serial2);
        Assert.IsTrue(output.All(c => c == 'B'), $"the restored guest prints only 'B's: '{output}'");
        AbRamCheckResult check = AssertAbRam(destination);
        int advanced = (byte)(check.FirstByte - sourceByte);
        Assert.IsTrue(advanced is > 0 and < 128, $"the byte at 1 MiB went on from the source's 0x{sourceByte:x2} (now 0x{check.FirstByte:x2})");
        lock (events)
        {
            CollectionAssert.AreEqual(new[] { "RESUME", "STOP" }, events);
        }
    }

    [TestMethod]
    public void StopBeforeIncomingCompletesLeavesTheRestoredGuestPaused()
    {
        RequireKvm();
        string serial1 = Path.Combine(Dir, "serial1.log");
        string serial2 = Path.Combine(Dir, "serial2.log");
        MachineSnapshot snapshot;
        using (VirtualMachine source = VirtualMachine.Create(ConfigFor(GuestPath("ab-guest.elf"), "64M", serial1), Plugins, MachineStartMode.Boot))
        {
            source.Start();
            WaitForBs(serial1, 1, Patience);
            source.Stop();
            snapshot = MachineSnapshot.Take(source);
        }

        using VirtualMachine destination = VirtualMachine.Create(ConfigFor(null, "64M", serial2), Plugins, MachineStartMode.Incoming);
        snapshot.RestoreInto(destination);
        destination.Stop();

        Assert.IsFalse(destination.CompleteIncoming(), "stop during inmigrate wins, as in QEMU");
        Assert.AreEqual(QmpRunState.Paused, destination.RunState);
        byte before = ByteAt1MiB(destination);
        Thread.Sleep(300);
        Assert.AreEqual(before, ByteAt1MiB(destination), "the guest does not run before cont");

        destination.Resume();
        WaitUntil(() => ReadSerial(serial2).Contains('B', StringComparison.Ordinal), Patience, () => $"a 'B' in {serial2} after cont");
        destination.Stop();
        AssertAbRam(destination);
    }
}
