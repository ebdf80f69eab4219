using Modular.Tests.Support;

namespace Modular.Tests.Cli;

[TestClass]
public sealed class CliTests
{
    [TestMethod]
    [DataRow("--help")]
    [DataRow("plugins", "--help")]
    [DataRow("config", "--help")]
    [DataRow("config", "check", "--help")]
    [DataRow("config", "keys", "--help")]
    [DataRow("run", "--help")]
    [DataRow("migrate", "--help")]
    [DataRow("demo", "--help")]
    [DataRow("tls-creds", "--help")]
    public void EveryCommandHasHelp(params string[] args)
    {
        CliProcess.Result result = CliProcess.Run(args);

        Assert.AreEqual(0, result.ExitCode, result.StdErr);
        StringAssert.Contains(result.StdOut, "Usage:");
        StringAssert.Contains(result.StdOut, "--log-level");
    }

    [TestMethod]
    public void AnUnknownOptionIsAUsageErrorWithExitCode2()
    {
        CliProcess.Result result = CliProcess.Run("plugins", "--frobnicate");

        Assert.AreEqual(2, result.ExitCode);
        StringAssert.Contains(result.StdErr, "Unrecognized command or argument '--frobnicate'");
        StringAssert.Contains(result.StdErr, "modular --help");
    }

    [TestMethod]
    public void ConfigCheckReportsProblemsWithExitCode2()
    {
        string dir = TestPluginCompiler.TempDirectory("cli-config");
        string path = Path.Combine(dir, "bad.json");
        File.WriteAllText(path, """{ "machine": { "vcpu": 2 } }""");

        CliProcess.Result result = CliProcess.Run("config", "check", path);

        Assert.AreEqual(2, result.ExitCode);
        StringAssert.Contains(result.StdErr, "machine.vcpu: unknown key 'vcpu' in machine; did you mean 'vcpus'?");
        Directory.Delete(dir, true);
    }

    [TestMethod]
    public void ConfigCheckSummarisesAValidFileAndAppliesOverrides()
    {
        string dir = TestPluginCompiler.TempDirectory("cli-config");
        string path = Path.Combine(dir, "good.json");
        File.WriteAllText(path, """{ "machine": { "memory": "512M" } }""");

        CliProcess.Result result = CliProcess.Run("config", "check", path, "--set", "machine.vcpus=2");

        Assert.AreEqual(0, result.ExitCode, result.StdErr);
        StringAssert.Contains(result.StdOut, "valid.");
        StringAssert.Contains(result.StdOut, "kvm, 512M RAM, 2 vCPU(s)");
        Directory.Delete(dir, true);
    }

    [TestMethod]
    public void PluginsListsThePartsFoundInAnExtraDirectory()
    {
        string root = TestPluginCompiler.TempDirectory("cli-plugins");
        TestPluginCompiler.Compile(Path.Combine(root, "transport-zeta"), "Zeta.Transport", TestPluginCompiler.TransportSource("Zeta", "zeta", notUsableReason: "zeta needs a flux capacitor"));

        CliProcess.Result result = CliProcess.Run("plugins", "--plugins", root);

        Assert.AreEqual(0, result.ExitCode, result.StdErr);
        StringAssert.Contains(result.StdOut, "transport-zeta");
        StringAssert.Contains(result.StdOut, "no: zeta needs a flux capacitor");
        StringAssert.Contains(result.StdOut, "Zeta.Transport.dll");
        Directory.Delete(root, true);
    }
}

[TestClass]
public sealed class DemoTests
{
    [TestMethod]
    public void TheDemoMigratesTheGuestAndTheDestinationPassesTheRamCheck()
    {
        if (!File.Exists("/dev/kvm"))
        {
            Assert.Inconclusive("/dev/kvm is missing: the demo would run on the synthetic accelerator; this test checks the KVM path.");
        }

        CliProcess.Result result = CliProcess.Run(TimeSpan.FromMinutes(3), "demo", "--memory", "128M");

        Assert.AreEqual(0, result.ExitCode, result.StdOut + result.StdErr);
        StringAssert.Contains(result.StdOut, "status:       completed");
        StringAssert.Contains(result.StdOut, "guest on the destination: still running");
        StringAssert.Contains(result.StdOut, "RAM check on the destination: passed");
    }

    [TestMethod]
    public void TheDemoWithMultifdMigratesOverUnixAndTheRamCheckPasses()
    {
        if (!File.Exists("/dev/kvm"))
        {
            Assert.Inconclusive("/dev/kvm is missing: the demo would run on the synthetic accelerator; this test checks the KVM path.");
        }

        CliProcess.Result result = CliProcess.Run(TimeSpan.FromMinutes(3), "demo", "--memory", "128M", "--transport", "unix", "--multifd");

        Assert.AreEqual(0, result.ExitCode, result.StdOut + result.StdErr);
        StringAssert.Contains(result.StdOut, "precopy with multifd");
        StringAssert.Contains(result.StdOut, "status:       completed");
        StringAssert.Contains(result.StdOut, "RAM check on the destination: passed");

        CliProcess.Result both = CliProcess.Run(TimeSpan.FromMinutes(1), "demo", "--multifd", "--postcopy");
        Assert.AreEqual(2, both.ExitCode, both.StdOut + both.StdErr);
        StringAssert.Contains(both.StdErr, "--multifd and --postcopy cannot be combined");
    }

    [TestMethod]
    public void TheDemoInTlsWithPostcopyMigratesAndTheRamCheckPasses()
    {
        if (!File.Exists("/dev/kvm"))
        {
            Assert.Inconclusive("/dev/kvm is missing: the demo would run on the synthetic accelerator; this test checks the KVM path.");
        }

        // Postcopy with its preempt channel: the main connection and the preempt channel both in TLS.
        CliProcess.Result result = CliProcess.Run(TimeSpan.FromMinutes(3), "demo", "--memory", "128M", "--tls", "--postcopy");

        Assert.AreEqual(0, result.ExitCode, result.StdOut + result.StdErr);
        StringAssert.Contains(result.StdOut, "over tcp in TLS, postcopy");
        StringAssert.Contains(result.StdOut, "TLS: every channel");
        StringAssert.Contains(result.StdOut, "status:       completed");
        StringAssert.Contains(result.StdOut, "guest on the destination: still running");
        StringAssert.Contains(result.StdOut, "RAM check on the destination: passed");
    }

    [TestMethod]
    public void TheDemoPausesAndRecoversPostcopyOverUnix_AndTheRamCheckPasses()
    {
        if (!File.Exists("/dev/kvm"))
        {
            Assert.Inconclusive("/dev/kvm is missing: the demo would run on the synthetic accelerator; this test checks the KVM path.");
        }

        CliProcess.Result result = CliProcess.Run(TimeSpan.FromMinutes(3), "demo", "--transport", "unix", "--postcopy", "--recovery");

        Assert.AreEqual(0, result.ExitCode, result.StdOut + result.StdErr);
        StringAssert.Contains(result.StdOut, "postcopy, paused and recovered on the way");
        StringAssert.Contains(result.StdOut, "source postcopy-paused (Paused by migrate-pause.), destination postcopy-paused");
        StringAssert.Contains(result.StdOut, "destination: migrate-recover unix:");
        StringAssert.Contains(result.StdOut, "status:       completed");
        StringAssert.Contains(result.StdOut, "recoveries:   1");
        StringAssert.Contains(result.StdOut, "guest on the destination: still running");
        StringAssert.Contains(result.StdOut, "RAM check on the destination: passed");

        CliProcess.Result alone = CliProcess.Run(TimeSpan.FromMinutes(1), "demo", "--recovery");
        Assert.AreEqual(2, alone.ExitCode, alone.StdOut + alone.StdErr);
        StringAssert.Contains(alone.StdErr, "--recovery shows postcopy recovery; add --postcopy.");
    }
}
