using System.Diagnostics;
using Modular.Cli.Children;

namespace Modular.Tests.Boot;

/// <summary>
/// Boots the test guests under QEMU (<c>qemu-system-x86_64 -accel kvm -kernel</c>) when it is
/// installed: the same images must run there, which keeps comparisons between Modular and QEMU honest.
/// </summary>
[TestClass]
public sealed class QemuBootTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(60);

    [TestMethod]
    public void AbGuestPrintsAThenBUnderQemu()
    {
        string qemu = FindQemu();
        string serial = Path.Combine(Path.GetTempPath(), $"modular-ab-{Environment.ProcessId}.serial");
        File.Delete(serial);
        using Process process = Start(qemu,
            "-accel", "kvm", "-M", "pc", "-m", "256", "-display", "none", "-monitor", "none", "-no-reboot",
            "-serial", "file:" + serial, "-kernel", TestKernels.GuestPath("ab-guest.elf"));
        try
        {
            string output = "";
            var clock = Stopwatch.StartNew();
            while (!output.Contains('B', StringComparison.Ordinal) && clock.Elapsed < Patience && !process.HasExited)
            {
                Thread.Sleep(100);
                output = File.Exists(serial) ? File.ReadAllText(serial) : "";
            }

            StringAssert.StartsWith(output, "AB", $"serial output of the A/B guest under QEMU: '{output}'");
            Assert.IsTrue(output.All(c => c is 'A' or 'B') && output.Count(c => c == 'A') == 1, $"only one 'A', then 'B's: '{output}'");
        }
        finally
        {
            Stop(process);
            File.Delete(serial);
        }
    }

    [TestMethod]
    public void ExitGuestEndsQemuThroughIsaDebugExit()
    {
        string qemu = FindQemu();
        using Process process = Start(qemu,
            "-accel", "kvm", "-M", "pc", "-m", "64", "-display", "none", "-monitor", "none", "-no-reboot",
            "-serial", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-kernel", TestKernels.GuestPath("exit-guest.elf"));
        try
        {
            Assert.IsTrue(process.WaitForExit(Patience), "the exit guest should end QEMU through port 0xf4");
            Assert.AreEqual((0x21 << 1) | 1, process.ExitCode, "exit status (EXIT_VALUE << 1) | 1");
            Assert.AreEqual("X", process.StandardOutput.ReadToEnd());
        }
        finally
        {
            Stop(process);
        }
    }

    private static string FindQemu() =>
        QemuChild.Find(out string? whyNot) ?? throw new AssertInconclusiveException(
            $"The test guests cannot be booted under QEMU for comparison: {whyNot}.");

    private static Process Start(string qemu, params string[] arguments)
    {
        var start = new ProcessStartInfo(qemu) { RedirectStandardOutput = true, UseShellExecute = false };
        foreach (string argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        return Process.Start(start) ?? throw new InvalidOperationException($"{qemu} did not start.");
    }

    private static void Stop(Process process)
    {
        if (!process.HasExited)
        {
            process.Kill(entireProcessTree: true);
            process.WaitForExit();
        }
    }
}
