using Modular.Cli.Commands;
using Modular.Tests.Support;

namespace Modular.Tests.Cli;

/// <summary><c>modular bench</c>'s option checks (the benchmark itself is run by hand, never as a timed test).</summary>
[TestClass]
public sealed class BenchCommandTests
{
    [TestMethod]
    [DataRow(new[] { "--transports", "tcp,rdma" }, "--transports 'tcp,rdma': the benchmark measures tcp and unix; give one or both, comma-separated.")]
    [DataRow(new[] { "--memory", "1K" }, "--memory '1K': expected a size above 1M such as 256M or 1G.")]
    [DataRow(new[] { "--set", "machine.memory-backend" }, "--set 'machine.memory-backend': expected KEY=VALUE")]
    [DataRow(new[] { "--qemu", "/nonexistent/qemu-system-x86_64" }, "--qemu '/nonexistent/qemu-system-x86_64': no such file; give auto, off, or the path of a qemu-system-x86_64.")]
    [DataRow(new[] { "--postcopy-runs", "0" }, "--postcopy-runs 0: give 1 to 50 runs.")]
    [DataRow(new[] { "--idle-runs", "51" }, "--idle-runs 51: give 1 to 50 runs.")]
    public void ABadOption_IsAUsageErrorNamingItAndWhatItTakes(string[] options, string message)
    {
        CliProcess.Result result = CliProcess.Run(["bench", .. options]);
        Assert.AreEqual(2, result.ExitCode, result.StdErr);
        StringAssert.Contains(result.StdErr, message);
    }

    [TestMethod]
    public void QemuOff_RunsNone_AndAnExistingPathIsTakenWhole()
    {
        (string? off, string offNote, string? offError) = BenchCommand.ResolveQemu("off");
        Assert.IsNull(off);
        Assert.IsNull(offError);
        Assert.AreEqual("--qemu off", offNote, "the bench prints why no QEMU ran");

        string file = Path.GetTempFileName();
        try
        {
            string relative = Path.GetRelativePath(Environment.CurrentDirectory, file);
            (string? path, _, string? error) = BenchCommand.ResolveQemu(relative);
            Assert.IsNull(error);
            Assert.AreEqual(file, path, "a relative path becomes the file's full path");
        }
        finally
        {
            File.Delete(file);
        }
    }

    [TestMethod]
    public void QemuAuto_FindsItOnPathOrSaysWhy()
    {
        (string? path, string note, string? error) = BenchCommand.ResolveQemu("auto");
        Assert.IsNull(error, "auto never fails: without QEMU the bench runs Modular's rows alone");
        if (path is null)
        {
            Assert.IsFalse(string.IsNullOrWhiteSpace(note), "the bench prints why no QEMU ran");
        }
        else
        {
            Assert.IsTrue(File.Exists(path), path);
            Assert.AreEqual("qemu-system-x86_64", Path.GetFileName(path));
        }
    }

    [TestMethod]
    public void AQemuThatCannotRun_IsReportedOnItsRow_AndModularsRowsStillRun()
    {
        CliProcess.Result result = RunQuickUnixBench("64M", "idle", "--qemu", "/bin/true");
        StringAssert.Matches(result.StdOut, new System.Text.RegularExpressions.Regex(@"unix\s+idle, filled\s+completed"), result.StdOut);
        StringAssert.Contains(result.StdOut, "QEMU, the same migration: could not run (/bin/true (qdst");
        StringAssert.Contains(result.StdOut, "the remaining rows run without QEMU");
    }

    [TestMethod]
    public void TheRecoveryRow_PausesAndResumesPostcopy_AndSaysHowLongEachTook()
    {
        CliProcess.Result result = RunQuickUnixBench("512M", "recovery", "--qemu", "off");
        StringAssert.Matches(result.StdOut, new System.Text.RegularExpressions.Regex(@"unix\s+postcopy, paused\s+completed"), result.StdOut);
        StringAssert.Matches(result.StdOut, new System.Text.RegularExpressions.Regex(@"Modular's recovery: paused \(migrate-pause to both sides postcopy-paused\) in [0-9.]+ ms; resumed \(migrate resume=true to postcopy-active\) in [0-9.]+ ms; [0-9]+ MB sent before the pause, [0-9]+ MB after the resume"), result.StdOut);
    }

    [TestMethod]
    public void TheRepeatedPostcopyRow_RunsAgain_AndPoolsEveryRunsRequests()
    {
        CliProcess.Result result = RunQuickUnixBench("256M", "postcopy", "--postcopy-runs", "2", "--qemu", "off");
        var requests = System.Text.RegularExpressions.Regex.Matches(result.StdOut, @"(?:postcopy:|run 2: completed, [0-9.]+ s, downtime [0-9]+ ms \([0-9.]+ ms of it stopping the vCPUs; the destination's vCPUs ran again [0-9.]+ ms after it read the package\),) (\d+) page requests");
        Assert.HasCount(2, requests, result.StdOut);
        System.Text.RegularExpressions.Match pooled = System.Text.RegularExpressions.Regex.Match(result.StdOut, @"2 completed runs pooled: (\d+) page requests \(each run's first included\)");
        Assert.IsTrue(pooled.Success, result.StdOut);
        StringAssert.Matches(result.StdOut, new System.Text.RegularExpressions.Regex(@"the downtime at the source: vCPUs stopped in [0-9.]+ ms, sync and discards [0-9.]+ ms, package built in [0-9.]+ ms, sent in [0-9.]+ ms"), "the first run says where its downtime went");
        StringAssert.Matches(result.StdOut, new System.Text.RegularExpressions.Regex(@"destination's vCPUs started [0-9.]+ ms after it had read the package and ran again [0-9.]+ ms after it"), "the first run says when the guest really ran again");

        // Both runs' sources served requests, and the pool holds the latencies their destinations
        // recorded (samples-us of each destination's query-migrate).
        int pooledCount = int.Parse(pooled.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
        int served = requests.Sum(m => int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture));
        Assert.IsGreaterThan(0, served, "a postcopy started at once on a dirtying guest requests pages");
        Assert.IsGreaterThan(0, pooledCount, result.StdOut);
    }

    [TestMethod]
    public void TheRepeatedIdleRows_RunAgain_EachAgainstTheSocketJustBefore_AndJudgeTheMedian()
    {
        CliProcess.Result result = RunQuickUnixBench("256M", "idle,multifd", "--idle-runs", "2", "--qemu", "off");
        StringAssert.Matches(result.StdOut, new System.Text.RegularExpressions.Regex(@"unix\s+idle, filled\s+completed"), result.StdOut);
        StringAssert.Matches(result.StdOut, new System.Text.RegularExpressions.Regex(@"unix\s+idle, multifd\s+completed"), result.StdOut);

        // Both idle rows, the plain one and the multifd one, run twice.
        Assert.HasCount(2, System.Text.RegularExpressions.Regex.Matches(result.StdOut, @"run 2: completed, [0-9.]+ s, downtime [0-9]+ ms, [0-9.]+ GB/s, [0-9]+ % of the plain socket just before \([0-9.]+ GB/s\); CPU: source [0-9.]+ s, destination [0-9.]+ s"), result.StdOut);
        Assert.HasCount(2, System.Text.RegularExpressions.Regex.Matches(result.StdOut, @"2 completed runs: total [0-9.]+-[0-9.]+ s \(median [0-9.]+ s\); [0-9]+ % of the plain socket measured just before each \(median; [0-9]+-[0-9]+ %\); downtime [0-9]+-[0-9]+ ms"), result.StdOut);
    }

    /// <summary>Runs <c>modular bench --quick</c> over unix with guests of <paramref name="memory"/> and the one row <paramref name="scenario"/> (then <paramref name="more"/>), and asserts that it exits 0. Needs KVM.</summary>
    private static CliProcess.Result RunQuickUnixBench(string memory, string scenario, params string[] more)
    {
        Machine.MachineTesting.RequireKvm();
        CliProcess.Result result = CliProcess.Run(TimeSpan.FromMinutes(3),
            ["bench", "--quick", "--memory", memory, "--transports", "unix", "--scenarios", scenario, .. more]);
        Assert.AreEqual(0, result.ExitCode, result.StdOut + result.StdErr);
        return result;
    }
}
