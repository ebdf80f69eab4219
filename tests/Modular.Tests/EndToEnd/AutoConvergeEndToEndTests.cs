using System.Text.Json.Nodes;
using Modular.Tests.Support;

namespace Modular.Tests.EndToEnd;

/// <summary>
/// auto-converge between two real <c>modular</c> processes with the KVM A/B guest (64 MiB), which
/// rewrites all of its RAM faster than 30 MB/s sends it: the source throttles its vCPU until a pass
/// fits the downtime limit, query-migrate shows the throttle while it lasts and 0 after, and the
/// destination's RAM passes the A/B check with the guest running on there.
/// </summary>
[TestClass]
public sealed class AutoConvergeEndToEndTests
{
    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    public async Task AbGuestFasterThanTheLink_ConvergesThrottled_RamChecksOnTheDestination()
    {
        await using MigrationPair pair = await MigrationPair.StartAsync("unix", memory: 64UL << 20);
        await pair.Source.Qmp.ExecuteAsync("migrate-set-capabilities", JsonNode.Parse("""{ "capabilities": [ { "capability": "auto-converge", "state": true } ] }""")!.AsObject());
        await pair.SetSourceParametersAsync(JsonNode.Parse("""{ "max-bandwidth": 30000000, "cpu-throttle-initial": 90, "cpu-throttle-increment": 9 }""")!.AsObject());

        await pair.MigrateAsync();
        var seen = new SortedSet<int>();
        JsonObject reply;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (true)
        {
            reply = await pair.Source.QueryMigrateAsync();
            string status = reply["status"]!.GetValue<string>();
            if (status is "completed" or "failed" or "cancelled")
            {
                break;
            }

            if (reply["cpu-throttle-percentage"] is { } throttle)
            {
                seen.Add(throttle.GetValue<int>());
            }

            Assert.IsLessThan(TimeSpan.FromSeconds(180), clock.Elapsed, $"still {status} after 3 minutes: {reply.ToJsonString()}");
            await Task.Delay(100);
        }

        Assert.AreEqual("completed", reply["status"]!.GetValue<string>(), reply.ToJsonString());
        CollectionAssert.IsSubsetOf(new[] { 0, 90, 99 }, seen.ToArray(), $"throttles seen: {string.Join(", ", seen)}");
        Assert.AreEqual(0, reply["cpu-throttle-percentage"]!.GetValue<int>(), "the throttle ends with the migration");
        Assert.IsGreaterThanOrEqualTo(4L, reply["ram"]!["dirty-sync-count"]!.GetValue<long>(), "two too-dirty periods per step");
        await PrecopyEndToEndTests.AssertGuestContinuesAsync(pair.Destination);
    }

    /// <summary>The same through <c>modular migrate --auto-converge --max-bandwidth</c>: it says each throttle step and the highest in its summary.</summary>
    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    public async Task ModularMigrate_AutoConvergeAndMaxBandwidth_SayWhatTheThrottleDid()
    {
        await using MigrationPair pair = await MigrationPair.StartAsync("unix", memory: 64UL << 20);
        await pair.SetSourceParametersAsync(JsonNode.Parse("""{ "cpu-throttle-initial": 90, "cpu-throttle-increment": 9 }""")!.AsObject());

        CliProcess.Result result = await Task.Run(() => CliProcess.Run(TimeSpan.FromMinutes(4), "migrate", "--qmp", pair.Source.QmpSocket, "--auto-converge", "--max-bandwidth", "30M", pair.DestinationUri));

        Assert.AreEqual(0, result.ExitCode, result.StdOut + result.StdErr);
        StringAssert.Contains(result.StdOut, "migration: vCPUs throttled to 90 % (auto-converge)");
        StringAssert.Contains(result.StdOut, "status:       completed");
        StringAssert.Contains(result.StdOut, "auto-converge: vCPUs throttled up to 99 % (now 0 %)");
        JsonObject parameters = (JsonObject)(await pair.Source.Qmp.ExecuteAsync("query-migrate-parameters"))!;
        Assert.AreEqual(30L << 20, parameters["max-bandwidth"]!.GetValue<long>());
        await PrecopyEndToEndTests.AssertGuestContinuesAsync(pair.Destination);
    }

    [TestMethod]
    public void ModularMigrate_ABandwidthThatIsNoSize_IsAUsageError()
    {
        CliProcess.Result result = CliProcess.Run("migrate", "--qmp", "/nonexistent.sock", "--max-bandwidth", "fast", "unix:/tmp/x.sock");

        Assert.AreEqual(2, result.ExitCode, result.StdErr);
        StringAssert.Contains(result.StdErr, "--max-bandwidth 'fast': expected bytes per second such as 100M or 1G, or 0 for unlimited.");
    }
}
