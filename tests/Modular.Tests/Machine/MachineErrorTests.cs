using Modular.Abstractions.Devices;
using Modular.Core.Config;
using Modular.Core.Interop;
using Modular.Core.Kvm;
using Modular.Core.Machine;
using Modular.Core.Plugins;
using Modular.Tests.Support;
using static Modular.Tests.Machine.MachineTesting;

namespace Modular.Tests.Machine;

/// <summary>
/// A machine that cannot be built or cannot load state says why, naming the thing and what to do:
/// KVM missing or not permitted, RAM the host cannot give, vCPU and clock sections that are newer,
/// truncated or for another vCPU.
/// </summary>
[TestClass]
public sealed class MachineErrorTests : MachineTestBase
{
    [TestMethod]
    public void MissingKvmSuggestsTheSyntheticAccelerator()
    {
        ModularConfig config = ConfigFor(GuestPath("ab-guest.elf"), "64M", Path.Combine(Dir, "serial.log"));
        int fdsBefore = OpenFdCount();

        var error = Assert.ThrowsExactly<MachineCreationException>(() =>
            VirtualMachine.Create(config, Plugins, MachineStartMode.Boot, null, "/dev/no-such-kvm", hostMemory: null));

        Assert.AreEqual(
            "/dev/no-such-kvm does not exist: this host has no KVM (load the kvm module, or enable nested virtualization for this VM). " +
            "To run without KVM, set machine.accelerator: \"synthetic\" in the VM config (no guest code runs; a workload thread dirties guest RAM instead).",
            error.Message);
        Assert.IsFalse(error.IsConfigError, "a host problem: exit code 1");
        Assert.IsInstanceOfType<KvmUnavailableException>(error.InnerException);
        Assert.IsTrue(OpenFdCount() <= fdsBefore, "the devices built before the failure were disposed (serial file closed)");
    }

    [TestMethod]
    public void KvmNotPermittedSaysWhatToDo()
    {
        KvmUnavailableException error = KvmUnavailableException.ForOpenError("/dev/kvm", Libc.EACCES);

        Assert.AreEqual(
            "/dev/kvm exists but this user may not open it (Permission denied (errno 13)): add the user to the group that owns /dev/kvm (often 'kvm') or run as root. " +
            "To run without KVM, set machine.accelerator: \"synthetic\" in the VM config (no guest code runs; a workload thread dirties guest RAM instead).",
            error.Message);
    }

    [TestMethod]
    public void RamBeyondTheHostsMemoryIsRefusedBeforeAnythingIsMapped()
    {
        ModularConfig config = ConfigFor(GuestPath("ab-guest.elf"), "3G", Path.Combine(Dir, "serial.log"));

        var error = Assert.ThrowsExactly<MachineCreationException>(() =>
            VirtualMachine.Create(config, Plugins, MachineStartMode.Boot, null, KvmSystem.DefaultPath, hostMemory: (2UL << 30, 512UL << 20)));

        Assert.AreEqual(
            "machine.memory: the host cannot give 3G of guest RAM: it has 2 GiB of memory and 512 MiB of swap (MemTotal and SwapTotal in /proc/meminfo), " +
            "and the guest may touch every page. Choose a smaller size with --memory or machine.memory.",
            error.Message);
        Assert.IsFalse(error.IsConfigError);
    }

    [TestMethod]
    public void RamBeyondWhatKvmMapsIsAClearErrorNotACrash()
    {
        RequireKvm();
        // Host memory unknown: the size reaches mmap (MAP_NORESERVE) and KVM, whose slots hold at most 8 TiB.
        ModularConfig config = ConfigFor(GuestPath("ab-guest.elf"), "16T", Path.Combine(Dir, "serial.log"));

        var error = Assert.ThrowsExactly<MachineCreationException>(() =>
            VirtualMachine.Create(config, Plugins, MachineStartMode.Boot, null, KvmSystem.DefaultPath, hostMemory: null));

        Assert.IsFalse(error.IsConfigError);
        Assert.IsTrue(
            error.Message.StartsWith("KVM could not set up a VM with 16T of RAM and 1 vCPU(s): KVM_SET_USER_MEMORY_REGION slot 1", StringComparison.Ordinal)
            || error.Message.StartsWith("machine.memory: The host cannot give 16777216 MiB of guest RAM", StringComparison.Ordinal),
            error.Message);
    }

    [TestMethod]
    public void TheHostMemoryCheckReadsProcMeminfo()
    {
        (ulong Ram, ulong Swap)? host = HostMemory.Read();

        Assert.IsNotNull(host);
        Assert.IsTrue(host.Value.Ram > 64UL << 20, $"MemTotal {host.Value.Ram}");
        HostMemory.CheckFits(host.Value.Ram, host);
        Assert.ThrowsExactly<MachineCreationException>(() => HostMemory.CheckFits(host.Value.Ram + host.Value.Swap + 4096, host));
    }

    [TestMethod]
    public void CpuSectionsThatAreNewerTruncatedOrForAnotherVcpuAreRefused()
    {
        RequireKvm();
        using VirtualMachine source = VirtualMachine.Create(
            ConfigFor(GuestPath("ab-guest.elf"), "64M", Path.Combine(Dir, "serial1.log"), ("machine.vcpus", "2")), Plugins, MachineStartMode.Boot);
        using VirtualMachine destination = VirtualMachine.Create(
            ConfigFor(null, "64M", Path.Combine(Dir, "serial2.log"), ("machine.vcpus", "2")), Plugins, MachineStartMode.Incoming);
        ISaveVmSection cpu0 = Section(destination, "cpu", 0);
        ISaveVmSection clock = Section(destination, "kvmclock", 0);
        byte[] saved0 = Save(Section(source, "cpu", 0));
        byte[] saved1 = Save(Section(source, "cpu", 1));

        var newer = Assert.ThrowsExactly<DeviceStateException>(() => cpu0.Load(new SaveVmReader(saved0, "cpu/0"), 2));
        Assert.AreEqual("Section 'cpu/0': version 2 is not supported; this build reads versions 1 to 1.", newer.Message);

        var truncated = Assert.ThrowsExactly<DeviceStateException>(() => cpu0.Load(new SaveVmReader(saved0.AsMemory(0, saved0.Length - 100), "cpu/0"), 1));
        Assert.AreEqual($"Section 'cpu/0' is truncated: vCPU state needs {saved0.Length - 4} bytes at offset 4, {saved0.Length - 104} left.", truncated.Message);

        // A consistent buffer whose vCPU state itself is cut short.
        byte[] inner = saved0[4..^100];
        byte[] cut = [.. BigEndian((uint)inner.Length), .. inner];
        var shortState = Assert.ThrowsExactly<DeviceStateException>(() => cpu0.Load(new SaveVmReader(cut, "cpu/0"), 1));
        StringAssert.StartsWith(shortState.Message, "Section 'cpu/0': vCPU state is truncated: the header says ");

        var wrongVcpu = Assert.ThrowsExactly<DeviceStateException>(() => cpu0.Load(new SaveVmReader(saved1, "cpu/0"), 1));
        Assert.AreEqual("Section 'cpu/0' holds the state of vCPU 1, not of vCPU 0.", wrongVcpu.Message);

        byte[] clockState = Save(Section(source, "kvmclock", 0));
        var clockNewer = Assert.ThrowsExactly<DeviceStateException>(() => clock.Load(new SaveVmReader(clockState, "kvmclock/0"), 3));
        Assert.AreEqual("Section 'kvmclock/0': version 3 is not supported; this build reads versions 1 to 1.", clockNewer.Message);
        var clockShort = Assert.ThrowsExactly<DeviceStateException>(() => clock.Load(new SaveVmReader(clockState.AsMemory(0, 5), "kvmclock/0"), 1));
        Assert.AreEqual("Section 'kvmclock/0' is truncated: clock needs 8 bytes at offset 0, 5 left.", clockShort.Message);

        // After all that, the real state still loads.
        cpu0.Load(new SaveVmReader(saved0, "cpu/0"), 1);
        clock.Load(new SaveVmReader(clockState, "kvmclock/0"), 1);
    }

    [TestMethod]
    public void SyntheticWorkloadSectionsThatAreNewerOrOutsideRamAreRefused()
    {
        using VirtualMachine machine = VirtualMachine.Create(
            ConfigFor(null, "64M", Path.Combine(Dir, "serial.log"), ("machine.accelerator", "synthetic")), Plugins, MachineStartMode.Incoming);
        ISaveVmSection workload = Section(machine, "synthetic-workload", 0);
        byte[] state = Save(workload);

        var newer = Assert.ThrowsExactly<DeviceStateException>(() => workload.Load(new SaveVmReader(state, "synthetic-workload/0"), 2));
        Assert.AreEqual("Section 'synthetic-workload/0': version 2 is not supported; the synthetic workload reads version 1.", newer.Message);
        byte[] outside = [.. BigEndian64(1UL << 20), .. BigEndian64(0)];
        var beyond = Assert.ThrowsExactly<DeviceStateException>(() => workload.Load(new SaveVmReader(outside, "synthetic-workload/0"), 1));
        Assert.AreEqual("Section 'synthetic-workload/0': next page 1048576 is outside guest RAM (16384 pages).", beyond.Message);
    }

    private static ISaveVmSection Section(VirtualMachine machine, string id, uint instance) =>
        machine.StateSections().Single(s => s.IdString == id && s.InstanceId == instance);

    private static byte[] Save(ISaveVmSection section)
    {
        var writer = new SaveVmWriter();
        section.Save(writer);
        return writer.ToArray();
    }

    private static byte[] BigEndian(uint value)
    {
        byte[] bytes = new byte[4];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(bytes, value);
        return bytes;
    }

    private static byte[] BigEndian64(ulong value)
    {
        byte[] bytes = new byte[8];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64BigEndian(bytes, value);
        return bytes;
    }
}
