using System.Runtime.Versioning;
using Modular.Tests.Support;

namespace Modular.Tests.Cli;

/// <summary>
/// Bad input to <c>modular run</c>: each ends the process at once with the sentence a user reads
/// and exit code 2 (the config or command line is wrong) or 1 (the host cannot do it), never a crash.
/// </summary>
[TestClass]
[SupportedOSPlatform("linux")]
public sealed class RunCommandErrorTests
{
    private string _dir = string.Empty;

    [TestInitialize]
    public void CreateDirectory() => _dir = TestPluginCompiler.TempDirectory("run-errors");

    [TestCleanup]
    public void DeleteDirectory() => Directory.Delete(_dir, recursive: true);

    [TestMethod]
    public void AnImageWithoutAMultibootHeaderIsRefused()
    {
        string image = Path.Combine(_dir, "plain.bin");
        File.WriteAllBytes(image, new byte[16 * 1024]);

        CliProcess.Result result = CliProcess.Run("run", "--kernel", image, "--memory", "64M");

        AssertFailed(result, 2,
            $"modular: machine.kernel: {image} has no Multiboot header in its first 8 KiB; build it as a Multiboot v1 kernel (magic 0x1BADB002, flags, checksum on a 4-byte boundary near the start of the file).");
    }

    [TestMethod]
    public void AMissingKernelFileIsNamed()
    {
        string image = Path.Combine(_dir, "no-such.elf");

        CliProcess.Result result = CliProcess.Run("run", "--kernel", image, "--memory", "64M");

        AssertFailed(result, 2, $"modular: machine.kernel: {image} does not exist; give the path of a Multiboot v1 image");
    }

    [TestMethod]
    public void NoKernelAtAllSaysHowToGiveOne()
    {
        CliProcess.Result result = CliProcess.Run("run", "--memory", "64M");

        AssertFailed(result, 2, "modular: No kernel to boot: set machine.kernel in the config or pass --kernel FILE");
    }

    [TestMethod]
    public void RamThatIsNotAMultipleOfThePageSizeIsAConfigError()
    {
        CliProcess.Result result = CliProcess.Run("run", "--kernel", "guests/ab-guest.elf", "--memory", "1000001");

        AssertFailed(result, 2, "machine.memory: 1000001 bytes is not a multiple of the 4096-byte page size.");
    }

    [TestMethod]
    public void RamLargerThanTheHostHasIsRefusedClearly()
    {
        CliProcess.Result result = CliProcess.Run("run", "--kernel", "guests/ab-guest.elf", "--memory", "64T");

        AssertFailed(result, 1, "modular: machine.memory: the host cannot give 64T of guest RAM: it has ");
        StringAssert.Contains(result.StdErr, "of swap (MemTotal and SwapTotal in /proc/meminfo), and the guest may touch every page. Choose a smaller size with --memory or machine.memory.");
    }

    [TestMethod]
    public void TwoDevicesOnOnePortRangeAreRefused()
    {
        CliProcess.Result result = CliProcess.Run("run", "--kernel", "guests/ab-guest.elf", "--memory", "64M",
            "--set", "devices[1].type=debug-exit", "--set", "devices[1].iobase=0x3fa");

        AssertFailed(result, 2,
            "modular: devices[1]: Device 'debug-exit1' claims ports 0x3fa-0x3fa, which overlap ports 0x3f8-0x3ff of device 'com1' (first shared port 0x3fa). Give one of them a different port in the config.");
    }

    [TestMethod]
    public void AnUnknownDeviceTypeListsTheAvailableTypes()
    {
        string config = Path.Combine(_dir, "vm.json");
        File.WriteAllText(config, """{ "machine": { "memory": "64M", "kernel": "k.elf" }, "devices": [ { "type": "serial" }, { "type": "frobnicator" } ] }""");

        CliProcess.Result result = CliProcess.Run("run", "--config", config);

        AssertFailed(result, 2, "modular: devices[1].type: No plugin offers the device type 'frobnicator'. Available: debug-exit, dma-ring, serial.");
    }

    [TestMethod]
    public void KvmNotPermittedSuggestsTheSyntheticAccelerator()
    {
        Machine.MachineTesting.RequireKvm();
        if (Environment.UserName != "root" || !File.Exists("/usr/bin/setpriv"))
        {
            Assert.Inconclusive("This test runs modular as the user nobody through setpriv, which needs root.");
        }

        if ((File.GetUnixFileMode("/dev/kvm") & (UnixFileMode.OtherRead | UnixFileMode.OtherWrite)) != 0)
        {
            Assert.Inconclusive("/dev/kvm is open to every user on this host, so nobody may use it too.");
        }

        var psi = new System.Diagnostics.ProcessStartInfo("setpriv")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            WorkingDirectory = AppContext.BaseDirectory,
        };
        foreach (string arg in new[] { "--reuid=65534", "--regid=65534", "--clear-groups", "env", "HOME=/tmp", "DOTNET_CLI_HOME=/tmp", "dotnet", CliProcess.ModularDll, "run", "--kernel", "guests/ab-guest.elf", "--memory", "64M" })
        {
            psi.ArgumentList.Add(arg);
        }

        using var process = System.Diagnostics.Process.Start(psi)!;
        Task<string> stdout = process.StandardOutput.ReadToEndAsync();
        string stderr = process.StandardError.ReadToEnd();
        Assert.IsTrue(process.WaitForExit(TimeSpan.FromSeconds(60)), stderr);

        AssertFailed(new CliProcess.Result(process.ExitCode, stdout.Result, stderr), 1,
            "modular: /dev/kvm exists but this user may not open it (Permission denied (errno 13)): add the user to the group that owns /dev/kvm (often 'kvm') or run as root. " +
            "To run without KVM, set machine.accelerator: \"synthetic\" in the VM config");
    }

    [TestMethod]
    public void ATlsCredentialsObjectWithoutItsFilesStopsTheMachineAtStart()
    {
        string certs = Path.Combine(_dir, "certs");
        Directory.CreateDirectory(certs);
        string config = Path.Combine(_dir, "tls.json");
        File.WriteAllText(config, """
            { "machine": { "accelerator": "synthetic", "memory": "16M" },
              "objects": [ { "qom-type": "tls-creds-x509", "id": "tls0", "dir": "certs", "endpoint": "server" } ],
              "migration": { "incoming": "tcp:127.0.0.1:0", "parameters": { "tls-creds": "tls0" } } }
            """);

        CliProcess.Result result = CliProcess.Run("run", "--config", config);

        AssertFailed(result, 2,
            $"modular: objects[0]: TLS credentials 'tls0': {Path.Combine(certs, "ca-cert.pem")} does not exist; a server endpoint needs ca-cert.pem, server-cert.pem and server-key.pem in its dir (QEMU's layout).");
    }

    private static void AssertFailed(CliProcess.Result result, int exitCode, string message)
    {
        Assert.AreEqual(exitCode, result.ExitCode, $"stdout: {result.StdOut}; stderr: {result.StdErr}");
        StringAssert.Contains(result.StdErr, message);
        Assert.IsFalse(result.StdErr.Contains("Unhandled exception", StringComparison.Ordinal), result.StdErr);
        Assert.IsFalse(result.StdErr.Contains("   at ", StringComparison.Ordinal), "no stack trace: " + result.StdErr);
    }
}
