using Modular.Core.Machine;
using Modular.Core.Plugins;
using Modular.Tests.Support;
using static Modular.Tests.Machine.MachineTesting;

namespace Modular.Tests.Machine;

/// <summary>
/// Disposing a machine gives everything back: every file descriptor it opened (/dev/kvm, VM, vCPU,
/// serial output file) and every thread it started (vCPU, serial writer, synthetic workload).
/// </summary>
[TestClass]
public sealed class MachineResourceTests : MachineTestBase
{
    [TestMethod]
    public void DisposingAKvmMachineClosesItsFdsAndEndsItsThreads()
    {
        RequireKvm();
        RunAndDispose("ab-guest.elf", "kvm", "warm-up.log"); // first use loads code that keeps files open
        int fdsBefore = OpenFdCount();

        List<string> threadsWhileRunning = RunAndDispose("ab-guest.elf", "kvm", "serial.log");

        CollectionAssert.Contains(threadsWhileRunning, "vcpu0");
        CollectionAssert.Contains(threadsWhileRunning, "serial-out:seri", "the serial writer thread (names are cut to 15 bytes)");
        // KVM's per-VM kernel worker (with nx_huge_pages) lives in the process while the VM exists.
        bool kernelWorker = threadsWhileRunning.Contains("kvm-nx-lpage-re");
        AssertGivenBack(fdsBefore, kernelWorker ? ["vcpu0", "serial-out:seri", "kvm-nx-lpage-re"] : ["vcpu0", "serial-out:seri"]);
    }

    [TestMethod]
    public void DisposingASyntheticMachineEndsItsWorkloadThread()
    {
        RunAndDispose(null, "synthetic", "warm-up.log");
        int fdsBefore = OpenFdCount();

        List<string> threadsWhileRunning = RunAndDispose(null, "synthetic", "serial.log");

        CollectionAssert.Contains(threadsWhileRunning, "synthetic workl");
        AssertGivenBack(fdsBefore, "synthetic workl", "serial-out:seri");
    }

    /// <summary>Builds and runs a machine until its guest shows progress, notes its threads, disposes it.</summary>
    private List<string> RunAndDispose(string? guest, string accelerator, string serialName)
    {
        string serial = Path.Combine(Dir, serialName);
        using VirtualMachine machine = VirtualMachine.Create(
            ConfigFor(guest is null ? null : GuestPath(guest), "64M", serial, ("machine.accelerator", accelerator)), Plugins, MachineStartMode.Boot);
        machine.Start();
        if (guest is null)
        {
            WaitUntil(() => ByteAt1MiB(machine) != 0, Patience, () => "the synthetic workload to touch the page at 1 MiB");
        }
        else
        {
            WaitForBs(serial, 1, Patience);
        }

        return ThreadNames();
    }

    private static void AssertGivenBack(int fdsBefore, params string[] threads)
    {
        // Closing is synchronous; allow the runtime a moment for anything it closes lazily.
        WaitUntil(() => OpenFdCount() <= fdsBefore, TimeSpan.FromSeconds(2), () => $"the fd count to return to {fdsBefore} (now {OpenFdCount()}: {string.Join(", ", Directory.GetFileSystemEntries("/proc/self/fd").Select(Describe))})");
        foreach (string thread in threads)
        {
            WaitUntil(() => !ThreadNames().Contains(thread), TimeSpan.FromSeconds(2), () => $"thread {thread} to end with the machine");
        }
    }

    private static string Describe(string fdPath)
    {
        try
        {
            return Path.GetFileName(fdPath) + "->" + new FileInfo(fdPath).LinkTarget;
        }
        catch (IOException)
        {
            return Path.GetFileName(fdPath);
        }
    }
}
