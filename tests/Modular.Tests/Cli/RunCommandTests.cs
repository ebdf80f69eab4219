using System.Text.Json.Nodes;
using Modular.Core.Boot;
using Modular.Core.Qmp;
using Modular.Core.Verification;
using Modular.Tests.Boot;
using Modular.Tests.Support;

namespace Modular.Tests.Cli;

/// <summary>
/// <c>modular run</c> as a user runs it: a real process booting the test guests on KVM, driven over
/// its QMP socket or by signals, ending with the exit code and clean-up a user relies on.
/// </summary>
[TestClass]
public sealed class RunCommandTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(40);
    private static readonly TimeSpan Prompt = TimeSpan.FromSeconds(8);
    private string _dir = string.Empty;

    [TestInitialize]
    public void CreateDirectory() => _dir = TestPluginCompiler.TempDirectory("run");

    [TestCleanup]
    public void DeleteDirectory() => Directory.Delete(_dir, recursive: true);

    [TestMethod]
    public void ExitGuestEndsTheProcessWithItsExitCode()
    {
        Machine.MachineTesting.RequireKvm();
        CliProcess.Result result = CliProcess.Run(Patience,
            "run", "--kernel", "guests/exit-guest.elf", "--memory", "64M", "--set", "devices[1].type=debug-exit");

        Assert.AreEqual(67, result.ExitCode, result.StdErr);
        Assert.AreEqual("X", result.StdOut, "the serial port (default device, stdio) shows the guest's X");
        StringAssert.Contains(result.StdErr, "modular: KVM (/dev/kvm, API 12), 1 vCPU(s); 64M RAM; kernel ");
    }

    [TestMethod]
    public void TheExampleConfigRunsTheAbGuestOnStdout()
    {
        Machine.MachineTesting.RequireKvm();
        string config = Path.Combine(TestPluginCompiler.RepoRoot, "examples", "ab-guest.json");
        using ModularRun run = ModularRun.Start("--config", config, "--memory", "64M");

        run.WaitUntil(() => run.StdOut.StartsWith("AB", StringComparison.Ordinal), Patience, "'AB' on stdout");
        run.Signal("INT");

        Assert.IsTrue(run.WaitForExit(Prompt), run.Describe());
        Assert.AreEqual(0, run.ExitCode, run.Describe());
        StringAssert.Contains(run.StdErr, "artifacts/guests/ab-guest.elf");
    }

    [TestMethod]
    public void QmpStopContPmemsaveAndQuit()
    {
        Machine.MachineTesting.RequireKvm();
        string socket = Path.Combine(_dir, "q.sock");
        string serial = Path.Combine(_dir, "serial.log");
        using ModularRun run = ModularRun.Start("--kernel", "guests/ab-guest.elf", "--memory", "64M", "--qmp", socket, "--serial", "file:" + serial);
        run.WaitUntil(() => File.Exists(socket), Patience, "the QMP socket");
        QmpClient qmp = RunSync(() => QmpClient.ConnectAsync(socket));
        try
        {
            Assert.AreEqual("running", Status(qmp)["status"]!.GetValue<string>());
            Assert.IsTrue(Status(qmp)["running"]!.GetValue<bool>());
            run.WaitUntil(() => Machine.MachineTesting.ReadSerial(serial).StartsWith("AB", StringComparison.Ordinal), Patience, "'AB' on the serial port");

            RunSync(() => qmp.ExecuteAsync("stop"));
            RunSync(() => qmp.WaitForEventAsync("STOP", Prompt));
            JsonObject paused = Status(qmp);
            Assert.AreEqual("paused", paused["status"]!.GetValue<string>());
            Assert.IsFalse(paused["running"]!.GetValue<bool>());

            // pmemsave 1 MiB..64 MiB: the page first bytes form the A/B pattern; stopped, nothing moves.
            byte[] first = Pmemsave(qmp, "ram1.bin");
            Thread.Sleep(300);
            byte[] again = Pmemsave(qmp, "ram2.bin");
            Assert.IsTrue(first.AsSpan().SequenceEqual(again), "a stopped guest's RAM does not change");
            AbRamCheckResult check = CheckDump(first);
            Assert.IsTrue(check.Passed, check.Message);
            Assert.AreEqual(63UL * 256, check.PagesChecked);
            Assert.AreNotEqual(0, check.FirstByte);

            int bs = Machine.MachineTesting.ReadSerial(serial).Count(c => c == 'B');
            RunSync(() => qmp.ExecuteAsync("cont"));
            RunSync(() => qmp.WaitForEventAsync("RESUME", Prompt));
            Assert.AreEqual("running", Status(qmp)["status"]!.GetValue<string>());
            run.WaitUntil(() => Machine.MachineTesting.ReadSerial(serial).Count(c => c == 'B') > bs, Patience, "another 'B' after cont");

            RunSync(() => qmp.ExecuteAsync("quit"));
            QmpEvent shutdown = RunSync(() => qmp.WaitForEventAsync("SHUTDOWN", Prompt));
            Assert.AreEqual("""{"guest":false,"reason":"host-qmp-quit"}""", shutdown.Data!.ToJsonString());
        }
        finally
        {
            RunSync(async () => { await qmp.DisposeAsync(); return 0; });
        }

        Assert.IsTrue(run.WaitForExit(Prompt), "quit ends the process promptly; " + run.Describe());
        Assert.AreEqual(0, run.ExitCode, run.Describe());
        Assert.IsFalse(File.Exists(socket), "the QMP socket file is removed on exit");
        Assert.IsFalse(Directory.Exists($"/proc/{run.Id}"), "the process is gone");
    }

    [TestMethod]
    public void PausedStartsInPrelaunchAndContStartsTheGuest()
    {
        Machine.MachineTesting.RequireKvm();
        string socket = Path.Combine(_dir, "q.sock");
        string serial = Path.Combine(_dir, "serial.log");
        using ModularRun run = ModularRun.Start("--kernel", "guests/ab-guest.elf", "--memory", "64M", "--qmp", socket, "--serial", "file:" + serial, "--paused");
        run.WaitUntil(() => File.Exists(socket), Patience, "the QMP socket");
        QmpClient qmp = RunSync(() => QmpClient.ConnectAsync(socket));
        try
        {
            JsonObject status = Status(qmp);
            Assert.AreEqual("prelaunch", status["status"]!.GetValue<string>());
            Assert.IsFalse(status["running"]!.GetValue<bool>());
            Thread.Sleep(500);
            Assert.AreEqual(string.Empty, Machine.MachineTesting.ReadSerial(serial), "no guest code runs before cont");
            StringAssert.Contains(run.StdErr, "paused (QMP cont starts it)");

            RunSync(() => qmp.ExecuteAsync("cont"));
            RunSync(() => qmp.WaitForEventAsync("RESUME", Prompt));
            Assert.AreEqual("running", Status(qmp)["status"]!.GetValue<string>());
            run.WaitUntil(() => Machine.MachineTesting.ReadSerial(serial).StartsWith('A'), Patience, "'A' after cont");
            RunSync(() => qmp.ExecuteAsync("quit"));
        }
        finally
        {
            RunSync(async () => { await qmp.DisposeAsync(); return 0; });
        }

        Assert.IsTrue(run.WaitForExit(Prompt), run.Describe());
        Assert.AreEqual(0, run.ExitCode, run.Describe());
    }

    [TestMethod]
    [DataRow("INT")]
    [DataRow("TERM")]
    public void ASignalEndsTheProcessCleanly(string signal)
    {
        Machine.MachineTesting.RequireKvm();
        string socket = Path.Combine(_dir, "q.sock");
        using ModularRun run = ModularRun.Start("--kernel", "guests/ab-guest.elf", "--memory", "64M", "--qmp", socket);
        run.WaitUntil(() => run.StdOut.StartsWith("AB", StringComparison.Ordinal), Patience, "'AB' on stdout");

        run.Signal(signal);

        Assert.IsTrue(run.WaitForExit(Prompt), $"SIGINT/SIGTERM ends modular within {Prompt.TotalSeconds} s (no thread keeps it alive); " + run.Describe());
        Assert.AreEqual(0, run.ExitCode, run.Describe());
        Assert.IsFalse(Directory.Exists($"/proc/{run.Id}"), "the process is gone");
        Assert.IsFalse(File.Exists(socket), "the QMP socket file is removed on exit");
        Assert.IsFalse(run.StdErr.Contains("Unhandled exception", StringComparison.Ordinal), run.StdErr);
    }

    [TestMethod]
    public void SyntheticAcceleratorRunsWithoutGuestCodeAndSaysSo()
    {
        string socket = Path.Combine(_dir, "q.sock");
        using ModularRun run = ModularRun.Start("--memory", "64M", "--qmp", socket, "--set", "machine.accelerator=synthetic");
        run.WaitUntil(() => File.Exists(socket) && run.StdErr.Contains('\n', StringComparison.Ordinal), Patience, "the QMP socket and the startup line");
        StringAssert.StartsWith(run.StdErr, "modular: synthetic accelerator (no guest code; a workload thread dirties 20000 pages/s); 64M RAM; ");
        QmpClient qmp = RunSync(() => QmpClient.ConnectAsync(socket));
        try
        {
            Assert.AreEqual("running", Status(qmp)["status"]!.GetValue<string>());
            Thread.Sleep(1000);
            RunSync(() => qmp.ExecuteAsync("stop"));
            RunSync(() => qmp.WaitForEventAsync("STOP", Prompt));
            AbRamCheckResult check = CheckDump(Pmemsave(qmp, "ram.bin"));
            Assert.IsTrue(check.Passed, check.Message);
            Assert.IsNotNull(check.StepAddress, "the workload is mid-pass after one second at 20000 pages/s: " + check.Message);
            RunSync(() => qmp.ExecuteAsync("quit"));
        }
        finally
        {
            RunSync(async () => { await qmp.DisposeAsync(); return 0; });
        }

        Assert.IsTrue(run.WaitForExit(Prompt), run.Describe());
        Assert.AreEqual(0, run.ExitCode, run.Describe());
    }

    private static T RunSync<T>(Func<Task<T>> action) => Task.Run(action).GetAwaiter().GetResult();

    private static JsonObject Status(QmpClient qmp) => (JsonObject)RunSync(() => qmp.ExecuteAsync("query-status"))!;

    /// <summary>pmemsave of guest-physical 1 MiB..64 MiB into a file in the test folder; returns its bytes.</summary>
    private byte[] Pmemsave(QmpClient qmp, string name)
    {
        string file = Path.Combine(_dir, name);
        RunSync(() => qmp.ExecuteAsync("pmemsave", new JsonObject { ["val"] = 1 << 20, ["size"] = 63 << 20, ["filename"] = file }));
        byte[] bytes = File.ReadAllBytes(file);
        Assert.AreEqual(63 << 20, bytes.Length);
        return bytes;
    }

    /// <summary>The A/B check over a pmemsave dump of 1 MiB..64 MiB.</summary>
    private static AbRamCheckResult CheckDump(byte[] dump)
    {
        var ram = new[] { new GuestRamRange(new(1UL << 20), (ulong)dump.Length) };
        var memory = new FirstByteMemory(ram, address => dump[address - (1UL << 20)]);
        return AbRamCheck.Check(memory, ram);
    }
}
