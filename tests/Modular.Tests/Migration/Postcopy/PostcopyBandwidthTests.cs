using System.Diagnostics;
using System.Text.Json.Nodes;
using Modular.Core.Migration.State;
using Modular.Tests.Support;

namespace Modular.Tests.Migration.Postcopy;

/// <summary>
/// QEMU's max-postcopy-bandwidth: from the switch to postcopy on, it (not max-bandwidth) caps the
/// background stream; 0, the default, is unlimited. Synthetic 32 MiB guests, postcopy switched at
/// once, so nearly all of RAM goes after the switch.
/// </summary>
[TestClass]
public sealed class PostcopyBandwidthTests
{
    private string _dir = "";

    [TestInitialize]
    public void Setup() => _dir = TestPluginCompiler.TempDirectory("postcopy-bw");

    [TestCleanup]
    public void Cleanup() => Directory.Delete(_dir, recursive: true);

    /// <summary>A postcopy migration switched at once, with the rate limits set; the clock starts just before the migration does.</summary>
    private async Task<(InProcessMigrationPair Pair, Stopwatch Clock)> StartPostcopyAsync(ulong maxBandwidth, ulong? maxPostcopyBandwidth)
    {
        var clock = new Stopwatch();
        InProcessMigrationPair pair = await InProcessMigrationPair.StartAsync(
            InProcessMigrationPair.Config(_dir, "postcopy-ram"), InProcessMigrationPair.Config(_dir, "postcopy-ram"), startPostcopy: true,
            configureSource: c =>
            {
                c.Settings.SetParameters(null, maxBandwidth, maxPostcopyBandwidth: maxPostcopyBandwidth);
                clock.Start();
            });
        return (pair, clock);
    }

    [TestMethod]
    public async Task Parameter_DefaultsToUnlimited_AndRoundTripsThroughQmp()
    {
        await using InProcessMigrationPair pair = await InProcessMigrationPair.StartAsync(
            InProcessMigrationPair.Config(_dir), InProcessMigrationPair.Config(_dir));
        JsonNode? before = await pair.ExecuteAsync("query-migrate-parameters", new JsonObject());
        Assert.AreEqual(0UL, before!["max-postcopy-bandwidth"]!.GetValue<ulong>(), before.ToJsonString());
        await pair.ExecuteAsync("migrate-set-parameters", JsonNode.Parse("""{ "max-postcopy-bandwidth": 12345678 }""")!.AsObject());
        JsonNode? after = await pair.ExecuteAsync("query-migrate-parameters", new JsonObject());
        Assert.AreEqual(12_345_678UL, after!["max-postcopy-bandwidth"]!.GetValue<ulong>());
        Assert.AreEqual(before["max-bandwidth"]!.GetValue<ulong>(), after["max-bandwidth"]!.GetValue<ulong>(), "max-bandwidth is a parameter of its own");
    }

    [TestMethod]
    public async Task MaxPostcopyBandwidth_PacesTheBackgroundStream_AndRequestsStillGetServed()
    {
        // Both phases paced at the same rate, so the whole migration cannot beat transferred / limit;
        // unpaced after the switch (the first 50 ms iteration is all precopy gets) it took 0.4 s.
        // A batch of 16 background pages is 32 ms of this budget: a request that waited for the pacing
        // would wait about that long (measured: median 35 ms without the wake-up, 0.2-0.3 ms with it).
        const ulong limit = 2_000_000;
        (InProcessMigrationPair started, Stopwatch clock) = await StartPostcopyAsync(maxBandwidth: limit, maxPostcopyBandwidth: limit);
        await using InProcessMigrationPair pair = started;
        // The destination's fault-to-placement figures, read while postcopy runs (they end with it).
        JsonObject latency = new();
        Task finished = pair.Outgoing.Completion.WaitAsync(TimeSpan.FromSeconds(60));
        while (!finished.IsCompleted)
        {
            var figures = new JsonObject();
            pair.Incoming.AddPostcopyFigures(figures);
            if (figures["x-modular-fault-latency"] is JsonObject current)
            {
                latency = (JsonObject)current.DeepClone();
            }

            await Task.WhenAny(finished, Task.Delay(100));
        }

        await finished;
        TimeSpan took = clock.Elapsed;
        await pair.Incoming.Completion.WaitAsync(TimeSpan.FromSeconds(30));

        Assert.AreEqual(MigrationStatus.Completed, pair.Outgoing.Status.Current, pair.Outgoing.Error);
        Assert.Contains(MigrationStatus.PostcopyActive, pair.Statuses.ToArray());
        Assert.IsGreaterThan(10L, latency["count"]?.GetValue<long>() ?? 0, latency.ToJsonString());
        Assert.IsLessThan(10_000.0, latency["median-us"]!.GetValue<double>(), $"requests waited for the pacing: {latency.ToJsonString()}");
        JsonObject reply = pair.SourceMigration.Query();
        long transferred = reply["ram"]!["transferred"]!.GetValue<long>();
        Assert.IsGreaterThan(1L << 20, transferred, reply.ToJsonString());
        double floorSeconds = 0.8 * (transferred / (double)limit);
        Assert.IsGreaterThan(floorSeconds, took.TotalSeconds, $"{transferred} bytes in {took.TotalSeconds:F2} s: faster than {limit} B/s allows");
        Assert.IsGreaterThan(0L, reply["ram"]!["postcopy-requests"]!.GetValue<long>(), "the running destination asked for pages while the stream was paced");
    }

    [TestMethod]
    public async Task MaxBandwidth_StopsAtTheSwitch_WhenMaxPostcopyBandwidthIsUnlimited()
    {
        const ulong precopyLimit = 1_000_000;
        (InProcessMigrationPair started, Stopwatch clock) = await StartPostcopyAsync(maxBandwidth: precopyLimit, maxPostcopyBandwidth: null);
        await using InProcessMigrationPair pair = started;
        await pair.Outgoing.Completion.WaitAsync(TimeSpan.FromSeconds(60));
        TimeSpan took = clock.Elapsed;

        Assert.AreEqual(MigrationStatus.Completed, pair.Outgoing.Status.Current, pair.Outgoing.Error);
        long transferred = pair.SourceMigration.Query()["ram"]!["transferred"]!.GetValue<long>();
        // At max-bandwidth all the way this would take transferred / 1 MB/s (about 6 s).
        double pacedSeconds = transferred / (double)precopyLimit;
        Assert.IsLessThan(pacedSeconds / 2, took.TotalSeconds, $"{transferred} bytes in {took.TotalSeconds:F2} s: postcopy still ran at max-bandwidth");
    }
}
