using System.Text.Json.Nodes;
using Modular.Cli.Bench;

namespace Modular.Tests.Cli;

/// <summary>
/// The bench's closing summary judges each of issues 4 and 5's targets from the run's own rows:
/// a figure on the right side of a target is "met", on the wrong side "NOT MET", a postcopy run
/// without page requests does not judge their latency, and a run on another guest size judges
/// nothing (the targets are for 1 GiB).
/// </summary>
[TestClass]
public sealed class BenchTargetsTests
{
    private static JsonObject Latency(int count, double medianUs, double p99Us) =>
        new() { ["count"] = count, ["median-us"] = medianUs, ["p99-us"] = p99Us };

    private static string LineFor(IReadOnlyList<string> lines, string text) =>
        lines.SingleOrDefault(l => l.Contains(text, StringComparison.Ordinal)) ?? throw new AssertFailedException($"no line with '{text}' in:\n{string.Join('\n', lines)}");

    [TestMethod]
    public void EachTargetIsJudgedFromTheRowThatMeasuresIt()
    {
        BenchTargets.Row[] rows =
        [
            new("tcp", "idle", true, 620, 9, 300, 0.67, null),
            new("unix", "multifd", true, 290, 8, 300, 0.83, null),
            new("tcp", "dirtying", true, 3000, 310, 300, 0.43, null),
            new("tcp", "postcopy", true, 1040, 2, 300, 0.40, Latency(12, 420, 3900)),
            new("unix", "postcopy", true, 1100, 4, 300, 0.20, Latency(30, 120, 800)),
        ];

        IReadOnlyList<string> lines = BenchTargets.Lines(rows, BenchTargets.TargetMemory);

        StringAssert.EndsWith(LineFor(lines, "idle 1 GiB over tcp in under 1.3 s"), "0.62 s: met");
        StringAssert.EndsWith(LineFor(lines, "idle guest, tcp:"), "67 %: NOT MET");
        StringAssert.EndsWith(LineFor(lines, "idle guest, unix with multifd"), "83 %: met");
        StringAssert.EndsWith(LineFor(lines, "downtime under the configured limit"), "NOT MET");
        StringAssert.Contains(LineFor(lines, "downtime under the configured limit"), "largest 310 ms (tcp dirtying)");
        StringAssert.EndsWith(LineFor(lines, "QEMU's 1.05 s"), "1.04 s: met");
        StringAssert.EndsWith(LineFor(lines, "at or under 3 ms, tcp"), "2 ms: met");
        StringAssert.EndsWith(LineFor(lines, "at or under 3 ms, unix"), "4 ms: NOT MET");
        StringAssert.EndsWith(LineFor(lines, "median under 150 us, tcp"), "NOT MET");
        StringAssert.EndsWith(LineFor(lines, "median under 150 us, unix"), "120 us over 30 requests: met");
        StringAssert.EndsWith(LineFor(lines, "p99 under 1 ms, tcp"), "3.90 ms: NOT MET");
        StringAssert.EndsWith(LineFor(lines, "p99 under 1 ms, unix"), "0.80 ms: met");
    }

    [TestMethod]
    public void ARepeatedIdleRow_IsJudgedByItsRunsMedian_AndItsLargestDowntime()
    {
        BenchTargets.Row[] rows =
        [
            // The first run alone would miss the share (63 %); the median of three meets it.
            new("unix", "idle", true, 280, 3, 300, 0.63, null)
            {
                MemorySocketRatio = 0.81,
                PrecopyRuns = [new(280, 3, 0.63), new(210, 2, 0.79), new(230, 320, 0.74)],
            },
            new("tcp", "idle", true, 1400, 9, 300, 0.90, null)
            {
                PrecopyRuns = [new(1400, 9, 0.90), new(1250, 8, 0.95), new(1200, 7, 0.99)],
            },

            // The multifd row too: its first run would meet the share (71 %), its median does not.
            new("unix", "multifd", true, 240, 4, 300, 0.71, null)
            {
                PrecopyRuns = [new(240, 4, 0.71), new(300, 4, 0.62), new(290, 5, 0.66)],
            },
        ];

        IReadOnlyList<string> lines = BenchTargets.Lines(rows, BenchTargets.TargetMemory);

        StringAssert.EndsWith(LineFor(lines, "idle guest, unix, "), "unix, median of 3 runs (63-79 %): 74 %: met");
        StringAssert.EndsWith(LineFor(lines, "idle 1 GiB over tcp in under 1.3 s"), "median of 3 runs (1.20-1.40 s): 1.25 s: met");
        StringAssert.EndsWith(LineFor(lines, "idle guest, unix with multifd"), "unix with multifd, median of 3 runs (62-71 %): 66 %: NOT MET");
        StringAssert.EndsWith(LineFor(lines, "memory-to-memory socket"), "first run: 81 %: at least 70 %");
        StringAssert.Contains(LineFor(lines, "downtime under the configured limit"), "largest 320 ms (unix idle)", "a run's downtime over the limit is not hidden by the median");
        StringAssert.EndsWith(LineFor(lines, "downtime under the configured limit"), "NOT MET");
        Assert.AreEqual(
            "    3 completed runs: total 0.21-0.28 s (median 0.23 s); 74 % of the plain socket measured just before each (median; 63-79 %); downtime 2-320 ms",
            BenchTargets.PrecopyRunsLine(rows[0].PrecopyRuns));
    }

    [TestMethod]
    public void ThePostcopyRowRunsOnUntilItsPoolHoldsAP99sWorthOfRequests_AtMostFourTimesItsRuns()
    {
        static BenchTargets.Run WithRequests(int count) => new(600, 0, Enumerable.Repeat(80.0, count).ToArray());
        BenchTargets.Run[] few = [.. Enumerable.Range(0, 5).Select(_ => WithRequests(12))]; // 60 requests
        BenchTargets.Run[] enough = [.. few, WithRequests(240)];                              // 300 requests

        Assert.IsTrue(BenchTargets.RunsAgain(3, 5, few[..3], judged: true), "the given runs come first");
        Assert.IsTrue(BenchTargets.RunsAgain(5, 5, few, judged: true), "60 requests: a p99 would be the largest");
        Assert.IsTrue(BenchTargets.RunsAgain(10, 5, [.. few, .. few], judged: true), "120 requests: a p99 would be the second largest");
        Assert.IsFalse(BenchTargets.RunsAgain(6, 5, enough, judged: true), "300 requests are enough");
        Assert.IsFalse(BenchTargets.RunsAgain(20, 5, [.. few, .. few, .. few, .. few], judged: true), "never more than four times the runs asked for");
        Assert.IsFalse(BenchTargets.RunsAgain(5, 5, few, judged: false), "where nothing is judged (not 1 GiB), the runs asked for are all");
        Assert.IsTrue(BenchTargets.RunsAgain(1, 5, [], judged: false));
    }

    [TestMethod]
    public void AFailedRowJudgesNothing_AndAPostcopyWithoutRequestsSaysSo()
    {
        BenchTargets.Row[] rows =
        [
            new("tcp", "idle", false, 0, 0, 300, 0, null),
            new("tcp", "postcopy", true, 1000, 1, 300, 0.5, Latency(0, 0, 0)),
        ];

        IReadOnlyList<string> lines = BenchTargets.Lines(rows, BenchTargets.TargetMemory);

        Assert.IsFalse(lines.Any(l => l.Contains("idle", StringComparison.Ordinal)), "a migration that did not complete has no figures to judge");
        StringAssert.Contains(LineFor(lines, "page requests, tcp"), "none were needed in this run");
        Assert.IsFalse(lines.Any(l => l.Contains("median under 150 us", StringComparison.Ordinal)));
    }

    [TestMethod]
    public void TheMemoryToMemorySocket_IsAReadingBesideTheIssuesYardstick_NotAVerdict()
    {
        BenchTargets.Row[] rows =
        [
            new("unix", "idle", true, 450, 6, 300, 0.46, null) { MemorySocketRatio = 0.56 },
            new("unix", "multifd", true, 300, 7, 300, 0.62, null) { MemorySocketRatio = 0.87 },
            new("tcp", "idle", true, 430, 9, 300, 0.98, null),
        ];

        IReadOnlyList<string> lines = BenchTargets.Lines(rows, BenchTargets.TargetMemory);

        var readings = lines.Where(l => l.Contains("memory-to-memory socket", StringComparison.Ordinal)).ToList();
        Assert.AreEqual(2, readings.Count, "one reading per row that measured it, none for the tcp row that did not");
        StringAssert.EndsWith(readings[0], "56 %: under 70 %");
        StringAssert.EndsWith(readings[1], "87 %: at least 70 %");
        Assert.IsFalse(readings.Any(l => l.EndsWith("met", StringComparison.Ordinal)), "the issue's verdict stays with its own yardstick");
        StringAssert.EndsWith(LineFor(lines, "idle guest, unix:"), "46 %: NOT MET");
        StringAssert.EndsWith(LineFor(lines, "idle guest, unix with multifd"), "62 %: NOT MET");
        var all = lines.ToList();
        Assert.AreEqual(all.IndexOf(LineFor(lines, "idle guest, unix:")) + 1, all.IndexOf(readings[0]), "each reading follows its row's verdict");
    }

    [TestMethod]
    public void AnotherGuestSizeIsNotJudged()
    {
        IReadOnlyList<string> lines = BenchTargets.Lines([new("tcp", "idle", true, 100, 1, 300, 0.9, null)], 256UL << 20);

        Assert.AreEqual(2, lines.Count);
        StringAssert.Contains(lines[1], "not judged: the targets are for 1 GiB guests, this run used 256M");
    }

    [TestMethod]
    public void QemuMeasuredInTheSameRun_IsJudgedAsARatio_AndOnlyWhereItRan()
    {
        BenchTargets.Row[] rows =
        [
            new("tcp", "idle", true, 600, 9, 300, 0.9, null) { QemuTotalMs = 1100 },
            new("tcp", "postcopy", true, 1200, 2, 300, 0.4, Latency(10, 300, 900)) { QemuTotalMs = 1600 },
            new("unix", "postcopy", true, 1000, 2, 300, 0.3, Latency(10, 300, 900)) { QemuTotalMs = 900 },
        ];

        IReadOnlyList<string> lines = BenchTargets.Lines(rows, BenchTargets.TargetMemory);

        // 600 ms against 1100 ms is 1.8 times as fast: not twice.
        StringAssert.EndsWith(LineFor(lines, "twice QEMU's speed"), "0.60 s against 1.10 s (1.8 times as fast): NOT MET");
        StringAssert.EndsWith(LineFor(lines, "QEMU's time in this run"), "1.20 s against 1.60 s: met");
        StringAssert.EndsWith(LineFor(lines, "QEMU's 1.05 s (the issue's figure)"), "1.20 s: NOT MET");
        Assert.IsFalse(lines.Any(l => l.Contains("in this run", StringComparison.Ordinal) && l.Contains("unix", StringComparison.Ordinal)), "the issues state QEMU's times for tcp only");

        IReadOnlyList<string> without = BenchTargets.Lines([rows[0] with { QemuTotalMs = null }, rows[1] with { QemuTotalMs = null }], BenchTargets.TargetMemory);
        Assert.IsFalse(without.Any(l => l.StartsWith("  issue", StringComparison.Ordinal) && l.Contains("in this run", StringComparison.Ordinal)), "no QEMU figure, no line that needs one");
        Assert.IsTrue(without.Any(l => l.Contains("idle 1 GiB over tcp in under 1.3 s", StringComparison.Ordinal)));
    }

    [TestMethod]
    public void ARepeatedPostcopyRow_IsJudgedOnEveryRunsRequestsPooled_TheMedianTotalAndTheLargestDowntime()
    {
        // Three runs: alone, the first run's 3 requests would fail the median (its first request is
        // slow); pooled, 10 requests have a median of 100 us and a p99 of the slowest, 900 us.
        BenchTargets.Run[] runs =
        [
            BenchTargets.Run.Of(900, 1, Samples(900, 200, 100)),
            BenchTargets.Run.Of(1100, 3, Samples(400, 90, 95, 100)),
            BenchTargets.Run.Of(800, 2, Samples(300, 80, 70)),
        ];
        var row = new BenchTargets.Row("tcp", "postcopy", true, 900, 1, 300, 0.4, Latency(3, 200, 900)) { Runs = runs };

        IReadOnlyList<string> lines = BenchTargets.Lines([row], BenchTargets.TargetMemory);

        StringAssert.EndsWith(LineFor(lines, "QEMU's 1.05 s (the issue's figure)"), "median of 3 runs: 0.90 s (0.80-1.10 s): met");
        StringAssert.EndsWith(LineFor(lines, "at or under 3 ms, tcp"), "largest of 3 runs: 3 ms: met");
        StringAssert.EndsWith(LineFor(lines, "median under 150 us, tcp"), "100 us over 10 requests of 3 runs: met");
        StringAssert.EndsWith(LineFor(lines, "p99 under 1 ms, tcp"), "0.90 ms over the same requests: met");

        (int count, double median, double p90, double p99, double max) = BenchTargets.Pool(runs);
        Assert.AreEqual((10, 100.0, 400.0, 900.0, 900.0), (count, median, p90, p99, max));
        StringAssert.Contains(BenchTargets.PooledLine(runs), "3 completed runs pooled: 10 page requests (each run's first included), median 100.0 us, p90 400.0 us, p99 900.0 us, max 900.0 us; total 0.80-1.10 s (median 0.90 s); downtime 1-3 ms");

        // One run's downtime over 3 ms fails the downtime target, whatever the others did.
        BenchTargets.Run[] slower = [.. runs, BenchTargets.Run.Of(700, 5, Samples(100))];
        StringAssert.EndsWith(LineFor(BenchTargets.Lines([row with { Runs = slower }], BenchTargets.TargetMemory), "at or under 3 ms, tcp"), "largest of 4 runs: 5 ms: NOT MET");
    }

    private static JsonObject Samples(params double[] latenciesUs) =>
        new() { ["count"] = latenciesUs.Length, ["samples-us"] = new JsonArray(latenciesUs.Select(us => (JsonNode)us).ToArray()) };
}
