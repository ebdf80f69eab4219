using System.Text.Json.Nodes;
using Modular.Core.Config;
using Modular.Core.Machine;
using Modular.Core.Migration.Engine;
using Modular.Core.Migration.State;
using Modular.Core.Qmp;
using Modular.Tests.Support;

namespace Modular.Tests.Migration;

/// <summary>
/// QEMU's auto-converge: the rule that decides when and how far to throttle (migration_trigger_throttle
/// and mig_throttle_guest_down), its parameters (ranges, migrate-set-parameters all or nothing,
/// query-migrate-parameters, the config), the CPU throttle's slices, and a migration that converges
/// only because of it, in one process (synthetic accelerator, real tcp transport).
/// </summary>
[TestClass]
public sealed class AutoConvergeTests
{
    private const long MiB = 1 << 20;

    private string _dir = "";

    [TestInitialize]
    public void Setup() => _dir = TestPluginCompiler.TempDirectory("autoconverge");

    [TestCleanup]
    public void Cleanup() => Directory.Delete(_dir, recursive: true);

    [TestMethod]
    public void TwoTooDirtyPeriods_ThrottleToTheInitialValue_ThenByTheIncrement_UpToTheMax()
    {
        var rule = new AutoConverge(new ThrottleParameters(Initial: 30, Increment: 25, Max: 90), nowMs: 0, sentBytes: 0);
        long sent = 0, now = 0;
        int? Period(long dirty, long sentInPeriod, int current)
        {
            now += 1000;
            sent += sentInPeriod;
            return rule.OnSync(dirty, now, sent, current);
        }

        Assert.IsNull(Period(60 * MiB, 100 * MiB, 0), "one period over the threshold is not enough");
        Assert.AreEqual(30, Period(60 * MiB, 100 * MiB, 0), "the second: cpu-throttle-initial");
        Assert.IsNull(Period(60 * MiB, 100 * MiB, 30));
        Assert.AreEqual(55, Period(60 * MiB, 100 * MiB, 30), "then cpu-throttle-increment more");
        Assert.IsNull(Period(60 * MiB, 100 * MiB, 55));
        Assert.AreEqual(80, Period(60 * MiB, 100 * MiB, 55));
        Assert.IsNull(Period(60 * MiB, 100 * MiB, 80));
        Assert.AreEqual(90, Period(60 * MiB, 100 * MiB, 80), "never above max-cpu-throttle");
    }

    [TestMethod]
    public void PeriodsAtOrUnderTheThreshold_NeverThrottle_AndDoNotResetTheCount()
    {
        var rule = new AutoConverge(new ThrottleParameters(TriggerThreshold: 50), nowMs: 0, sentBytes: 0);
        Assert.IsNull(rule.OnSync(50 * MiB, 1000, 100 * MiB, 0), "exactly the threshold is not over it");
        Assert.IsNull(rule.OnSync(10 * MiB, 2000, 200 * MiB, 0));
        Assert.IsNull(rule.OnSync(51 * MiB, 3000, 300 * MiB, 0), "the first period over it");
        Assert.IsNull(rule.OnSync(1 * MiB, 4000, 400 * MiB, 0));
        Assert.AreEqual(20, rule.OnSync(51 * MiB, 5000, 500 * MiB, 0), "the second period over it, as in QEMU (not necessarily in a row)");
    }

    [TestMethod]
    public void SyncsWithinASecond_AddUpIntoOnePeriod()
    {
        var rule = new AutoConverge(ThrottleParameters.Default, nowMs: 0, sentBytes: 0);
        Assert.IsNull(rule.OnSync(40 * MiB, 400, 50 * MiB, 0), "under a second: no decision");
        Assert.IsNull(rule.OnSync(40 * MiB, 800, 100 * MiB, 0));
        Assert.IsNull(rule.OnSync(40 * MiB, 1200, 150 * MiB, 0), "120 MiB dirty against 150 MiB sent: the first period over");
        Assert.IsNull(rule.OnSync(10 * MiB, 1700, 200 * MiB, 0));
        Assert.AreEqual(20, rule.OnSync(80 * MiB, 2300, 250 * MiB, 0), "90 MiB dirty against 100 MiB sent: the second");
    }

    [TestMethod]
    public void TailSlow_StepsOnlyAsFarAsTheDirtyRateNeeds()
    {
        var rule = new AutoConverge(new ThrottleParameters(Initial: 50, Increment: 40, TailSlow: true), nowMs: 0, sentBytes: 0);
        _ = rule.OnSync(60 * MiB, 1000, 100 * MiB, 50);
        // CPU now 50 %; dirty 60 MiB against a 50 MiB threshold: the ideal CPU is 50 x 50/60 = 41.7 %,
        // so the throttle rises by 8.3 points (not 40) and is truncated, as QEMU's integers are.
        Assert.AreEqual(58, rule.OnSync(60 * MiB, 2000, 200 * MiB, 50));
    }

    [TestMethod]
    [DataRow(0, 10, 99, 50, "cpu-throttle-initial")]
    [DataRow(20, 100, 99, 50, "cpu-throttle-increment")]
    [DataRow(20, 10, 0, 50, "max-cpu-throttle")]
    [DataRow(20, 10, 99, 101, "throttle-trigger-threshold")]
    public void AValueOutOfQemusRange_IsNamed(int initial, int increment, int max, int threshold, string name)
    {
        string? problem = new ThrottleParameters(initial, increment, max, threshold).Problem();
        Assert.IsNotNull(problem);
        StringAssert.StartsWith(problem, $"Parameter '{name}' expects an integer in the range of 1 to");
        Assert.IsNull(ThrottleParameters.Default.Problem());
    }

    [TestMethod]
    public async Task CpuThrottle_HandsOutSlicesForItsPercentage_AndNoneAfterStop()
    {
        var sleeps = new System.Collections.Concurrent.ConcurrentQueue<TimeSpan>();
        using var throttle = new CpuThrottle(sleeps.Enqueue);
        Assert.AreEqual(0, throttle.Percentage);

        throttle.Set(75);
        await Task.Delay(400);
        throttle.Stop();
        int slices = sleeps.Count;
        await Task.Delay(200);

        Assert.AreEqual(0, throttle.Percentage);
        Assert.AreEqual(slices, sleeps.Count, "no slice after Stop");
        // At 75 % a period is 40 ms (10 ms running, 30 ms asleep): about ten in 400 ms.
        Assert.IsTrue(slices is >= 4 and <= 14, $"{slices} slices in 400 ms at 75 %");
        Assert.IsTrue(sleeps.All(s => Math.Abs(s.TotalMilliseconds - 30) < 0.01), string.Join(", ", sleeps));
        Assert.AreEqual(TimeSpan.FromMilliseconds(40), CpuThrottle.PeriodFor(75));

        throttle.Set(0);
        Assert.AreEqual(1, throttle.Percentage, "clamped to QEMU's 1-99");
        throttle.Set(150);
        Assert.AreEqual(99, throttle.Percentage);
        throttle.Stop();
    }

    [TestMethod]
    public async Task Parameters_AreSetAllOrNothing_AndShownByQueryMigrateParameters()
    {
        await using InProcessMigrationPair pair = await InProcessMigrationPair.StartAsync(
            Config(pagesPerSecond: 1000, paused: false, "pause-before-switchover"), Config(pagesPerSecond: 0, paused: true));

        // Parsed, as arguments arrive over QMP.
        await pair.ExecuteAsync("migrate-set-parameters", Json("""{ "cpu-throttle-initial": 35, "cpu-throttle-increment": 15, "max-cpu-throttle": 80, "throttle-trigger-threshold": 40, "cpu-throttle-tailslow": true }"""));
        QmpException refused = await Assert.ThrowsExactlyAsync<QmpException>(() => pair.ExecuteAsync("migrate-set-parameters", Json("""{ "downtime-limit": 123, "max-cpu-throttle": 100 }""")));
        Assert.AreEqual("Parameter 'max-cpu-throttle' expects an integer in the range of 1 to 99", refused.Message);

        var shown = (JsonObject)(await pair.ExecuteAsync("query-migrate-parameters", new JsonObject()))!;
        Assert.AreEqual(35, shown["cpu-throttle-initial"]!.GetValue<int>());
        Assert.AreEqual(15, shown["cpu-throttle-increment"]!.GetValue<int>());
        Assert.AreEqual(80, shown["max-cpu-throttle"]!.GetValue<int>(), "the refused call changed nothing");
        Assert.AreEqual(40, shown["throttle-trigger-threshold"]!.GetValue<int>());
        Assert.IsTrue(shown["cpu-throttle-tailslow"]!.GetValue<bool>());
        Assert.AreNotEqual(123, shown["downtime-limit"]!.GetValue<long>(), "nor the valid value given with it");
    }

    [TestMethod]
    public void TheConfig_SetsTheParameters_AndRefusesAValueOutOfRange()
    {
        string path = Path.Combine(_dir, "throttle.json");
        File.WriteAllText(path, """
            { "machine": { "accelerator": "synthetic" },
              "migration": { "capabilities": { "auto-converge": true }, "parameters": { "cpu-throttle-initial": 40, "cpu-throttle-tailslow": true } } }
            """);
        ModularConfig config = ConfigLoader.Load(path);
        Assert.IsTrue(config.Migration.Capabilities["auto-converge"]);
        Assert.AreEqual(new ThrottleParameters(Initial: 40, TailSlow: true), config.Migration.Throttle);

        File.WriteAllText(path, """{ "machine": { "accelerator": "synthetic" }, "migration": { "parameters": { "max-cpu-throttle": 100 } } }""");
        ConfigException bad = Assert.ThrowsExactly<ConfigException>(() => ConfigLoader.Load(path));
        StringAssert.Contains(bad.Message, "migration.parameters.max-cpu-throttle");
    }

    /// <summary>
    /// A guest that dirties 200000 pages a second (synthetic, 32 MiB). Without auto-converge, at
    /// 8 MB/s, no pass gets under the downtime limit: that needs fewer than about 600 pages dirtied
    /// in a four-second pass, under 1 % of the guest's rate (a first version at 32 MB/s converged
    /// once in CI, where other test processes starved the guest to 4 % of its rate). With it, at
    /// 32 MB/s, the throttle rises (90 %, then 99 %, where the guest dirties about 2000 pages a
    /// second) until a pass does, and the migration completes with the destination's RAM equal to
    /// the source's.
    /// </summary>
    [TestMethod]
    public async Task ATooDirtyGuest_ConvergesOnlyWithAutoConverge()
    {
        const long bandwidth = 32_000_000;
        await using (InProcessMigrationPair without = await InProcessMigrationPair.StartAsync(
            Config(pagesPerSecond: 200_000, paused: false), Config(pagesPerSecond: 0, paused: true),
            configureSource: c => c.Settings.SetParameters(null, 8_000_000)))
        {
            await Task.Delay(TimeSpan.FromSeconds(9));
            JsonObject reply = without.SourceMigration.Query();
            Assert.AreEqual("active", reply["status"]!.GetValue<string>(), $"without auto-converge it does not converge: {reply.ToJsonString()}");
            Assert.IsGreaterThanOrEqualTo(2L, reply["ram"]!["dirty-sync-count"]!.GetValue<long>(), reply.ToJsonString());
            Assert.IsNull(reply["cpu-throttle-percentage"], "shown only with the capability, as QEMU does");
            Assert.AreEqual(0, without.Source.CpuThrottle.Percentage);
        }

        await using InProcessMigrationPair pair = await InProcessMigrationPair.StartAsync(
            Config(pagesPerSecond: 200_000, paused: false, "auto-converge"), Config(pagesPerSecond: 0, paused: true),
            configureSource: c => c.Settings.SetParameters(null, bandwidth, null, t => t with { Initial = 90, Increment = 9 }));
        int highest = 0;
        while (!pair.Outgoing.Status.IsFinished)
        {
            JsonObject reply = pair.SourceMigration.Query();
            highest = Math.Max(highest, reply["cpu-throttle-percentage"]?.GetValue<int>() ?? -1);
            await Task.Delay(20).WaitAsync(TimeSpan.FromSeconds(60));
        }

        await pair.Outgoing.Completion.WaitAsync(TimeSpan.FromSeconds(60));
        await pair.Incoming.Completion.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.AreEqual(MigrationStatus.Completed, pair.Outgoing.Status.Current, pair.Outgoing.Error);
        Assert.IsGreaterThanOrEqualTo(90, highest, "the throttle rose to cpu-throttle-initial at least");
        Assert.AreEqual(0, pair.Source.CpuThrottle.Percentage, "stopped when the migration ended");
        Assert.AreEqual(0, pair.SourceMigration.Query()["cpu-throttle-percentage"]!.GetValue<int>());
        AssertSameRam(pair.Source, pair.Destination);
    }

    [TestMethod]
    public async Task MigrateCancel_WhileThrottled_EndsTheThrottle_AndTheGuestRunsOn()
    {
        await using InProcessMigrationPair pair = await InProcessMigrationPair.StartAsync(
            Config(pagesPerSecond: 200_000, paused: false, "auto-converge"), Config(pagesPerSecond: 0, paused: true),
            configureSource: c => c.Settings.SetParameters(null, 32_000_000, null, t => t with { Initial = 50 }));
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (pair.Source.CpuThrottle.Percentage == 0)
        {
            Assert.IsLessThan(TimeSpan.FromSeconds(60), clock.Elapsed, "the throttle never started");
            Assert.IsFalse(pair.Outgoing.Status.IsFinished, pair.Outgoing.Error);
            await Task.Delay(20);
        }

        Assert.AreEqual(50, pair.Source.CpuThrottle.Percentage);
        await pair.ExecuteAsync("migrate_cancel");
        await pair.Outgoing.Completion.WaitAsync(TimeSpan.FromSeconds(30));

        Assert.AreEqual(MigrationStatus.Cancelled, pair.Outgoing.Status.Current, pair.Outgoing.Error);
        Assert.AreEqual(0, pair.Source.CpuThrottle.Percentage, "the throttle ends with the migration, however it ends");
        Assert.AreEqual(QmpRunState.Running, pair.Source.RunState);
    }

    private static JsonObject Json(string text) => JsonNode.Parse(text)!.AsObject();

    private static void AssertSameRam(VirtualMachine source, VirtualMachine destination) => InProcessMigrationPair.AssertSameRam(source, destination);

    private ModularConfig Config(long pagesPerSecond, bool paused, params string[] capabilities) => InProcessMigrationPair.SyntheticConfig(_dir, pagesPerSecond, paused, capabilities);
}
