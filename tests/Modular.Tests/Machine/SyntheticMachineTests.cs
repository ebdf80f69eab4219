using Modular.Core.Machine;
using Modular.Core.Plugins;
using Modular.Core.Verification;
using Modular.Tests.Support;
using static Modular.Tests.Machine.MachineTesting;

namespace Modular.Tests.Machine;

/// <summary>
/// The synthetic accelerator: no guest code, a workload thread that dirties RAM the way the A/B
/// guest does, so the same RAM check holds; it names itself honestly and migrates its position.
/// </summary>
[TestClass]
public sealed class SyntheticMachineTests : MachineTestBase
{

    [TestMethod]
    public void WorkloadKeepsTheRamInvariantAcrossStopAndCont()
    {
        using VirtualMachine machine = VirtualMachine.Create(
            ConfigFor(null, "64M", Path.Combine(Dir, "serial.log"), ("machine.accelerator", "synthetic"), ("machine.synthetic.pages-per-second", "0")),
            Plugins, MachineStartMode.Boot);
        Assert.AreEqual("synthetic accelerator (no guest code; a workload thread dirties as many pages as it can)", machine.AcceleratorDescription);

        machine.Start();
        WaitUntil(() => ByteAt1MiB(machine) >= 2, Patience, () => "two passes of the workload");
        machine.Stop();
        AbRamCheckResult first = AssertAbRam(machine);
        Thread.Sleep(200);
        Assert.AreEqual(first.FirstByte, ByteAt1MiB(machine), "a stopped workload touches nothing");

        machine.Resume();
        WaitUntil(() => ByteAt1MiB(machine) != first.FirstByte, Patience, () => "another pass after cont");
        machine.Stop();
        AssertAbRam(machine);
    }

    [TestMethod]
    public void WorkloadContinuesOnAFreshMachineAfterSaveAndRestore()
    {
        MachineSnapshot snapshot;
        using (VirtualMachine source = VirtualMachine.Create(
            ConfigFor(null, "64M", Path.Combine(Dir, "serial1.log"), ("machine.accelerator", "synthetic"), ("machine.synthetic.pages-per-second", "20000")),
            Plugins, MachineStartMode.Boot))
        {
            source.Start();
            WaitUntil(() => ByteAt1MiB(source) != 0, Patience, () => "the workload to start");
            Thread.Sleep(300);
            source.Stop();
            AbRamCheckResult check = AssertAbRam(source);
            Assert.IsNotNull(check.StepAddress, "at 20000 pages/s a pass over 63 MiB takes ~0.8 s: the workload is mid-pass");
            snapshot = MachineSnapshot.Take(source);
        }

        CollectionAssert.AreEqual(new[] { "serial/0", "debug-exit/0", "synthetic-workload/0" }, snapshot.Sections.Select(s => s.Name).ToArray());
        using VirtualMachine destination = VirtualMachine.Create(
            ConfigFor(null, "64M", Path.Combine(Dir, "serial2.log"), ("machine.accelerator", "synthetic"), ("machine.synthetic.pages-per-second", "20000")),
            Plugins, MachineStartMode.Incoming);
        snapshot.RestoreInto(destination);
        destination.CompleteIncoming();
        Thread.Sleep(300);
        destination.Stop();

        // Had the position not travelled, the workload would restart at 1 MiB and leave two steps.
        AssertAbRam(destination);
    }
}
