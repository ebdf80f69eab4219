using System.Net;
using System.Net.Sockets;
using System.Text.Json.Nodes;
using Modular.Core.Qmp;
using Modular.Core.Verification;
using Modular.Tests.Support;

namespace Modular.Tests.EndToEnd;

/// <summary>
/// Precopy failures with two real processes, each ending with nothing lost: migrate_cancel in setup
/// and in active, and the destination killed mid-migration. Afterwards the source guest runs, keeps
/// printing, and its RAM passes the A/B check.
/// </summary>
[TestClass]
public sealed class PrecopyFailureTests
{
    /// <summary>20 MB/s: 256 MiB takes over ten seconds, so the migration stays active long enough.</summary>
    private const long SlowBandwidth = 20_000_000;

    [TestMethod]
    [Timeout(240_000, CooperativeCancellation = true)]
    public async Task CancelInSetup_SourceKeepsRunning_NothingLost()
    {
        await using MigrationPair pair = MigrationPair.Create();
        await pair.StartSourceAsync();

        // A listener whose accept queue is full drops new SYNs, so connect() hangs: setup lasts
        // until the cancel.
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(0);
        var fillers = new List<Socket>();
        try
        {
            int port = ((IPEndPoint)listener.LocalEndPoint!).Port;
            await FillAcceptQueueAsync(port, fillers);
            await pair.MigrateAsync($"tcp:127.0.0.1:{port}");
            await pair.Source.WaitForMigrationStatusAsync("setup", TimeSpan.FromSeconds(10));
            await Task.Delay(300);
            Assert.AreEqual("setup", (await pair.Source.QueryMigrateAsync())["status"]?.GetValue<string>());
            await pair.Source.Qmp.ExecuteAsync("migrate_cancel");
            JsonObject end = await pair.Source.WaitForMigrationEndAsync(TimeSpan.FromSeconds(20));
            Assert.AreEqual("cancelled", end["status"]?.GetValue<string>(), end.ToJsonString());
            await AssertNothingLostAsync(pair.Source);
        }
        finally
        {
            fillers.ForEach(f => f.Dispose());
        }
    }

    [TestMethod]
    [DataRow("tcp")]
    [DataRow("unix")]
    [Timeout(240_000, CooperativeCancellation = true)]
    public async Task CancelInActive_SourceKeepsRunning_NothingLost(string scheme)
    {
        await using MigrationPair pair = await MigrationPair.StartAsync(scheme);
        await CancelMidMigrationAsync(pair, SlowBandwidth, _ => { });
    }

    /// <summary>
    /// Migrates at <paramref name="bandwidth"/>, runs <paramref name="whileActive"/> on the source's
    /// query-migrate a second into the active phase, cancels, and checks that nothing was lost and
    /// that the destination failed, saying so.
    /// </summary>
    internal static async Task CancelMidMigrationAsync(MigrationPair pair, long bandwidth, Action<JsonObject> whileActive)
    {
        await pair.SetSourceParametersAsync(new JsonObject { ["max-bandwidth"] = bandwidth });
        await pair.MigrateAsync();
        await pair.Source.WaitForMigrationStatusAsync("active", TimeSpan.FromSeconds(30));
        await Task.Delay(1000);
        JsonObject active = await pair.Source.QueryMigrateAsync();
        Assert.AreEqual("active", active["status"]?.GetValue<string>());
        whileActive(active);
        await pair.Source.Qmp.ExecuteAsync("migrate_cancel");
        JsonObject end = await pair.Source.WaitForMigrationEndAsync(TimeSpan.FromSeconds(20));
        Assert.AreEqual("cancelled", end["status"]?.GetValue<string>(), end.ToJsonString());
        Assert.IsNull(end["error-desc"], "a cancel is not an error");
        await AssertNothingLostAsync(pair.Source);

        // The destination saw the stream end early: it fails and exits 1, saying so.
        await pair.Destination.Exited.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.AreEqual(1, pair.Destination.ExitCode);
        StringAssert.Contains(pair.Destination.StdErr, "modular: Incoming migration failed");
    }

    [TestMethod]
    [Timeout(240_000, CooperativeCancellation = true)]
    public async Task CancelAfterCompletion_IsHarmless()
    {
        await using MigrationPair pair = await MigrationPair.StartAsync("unix");
        JsonObject end = await pair.MigrateToEndAsync();
        Assert.AreEqual("completed", end["status"]?.GetValue<string>(), end.ToJsonString());
        await pair.Source.Qmp.ExecuteAsync("migrate_cancel");
        Assert.AreEqual("completed", (await pair.Source.QueryMigrateAsync())["status"]?.GetValue<string>());
        Assert.AreEqual("postmigrate", await pair.Source.RunStateAsync());
    }

    [TestMethod]
    [DataRow("tcp")]
    [DataRow("unix")]
    [Timeout(240_000, CooperativeCancellation = true)]
    public async Task DestinationKilledMidMigration_SourceFailsClearly_GuestRunsOnSource(string scheme)
    {
        await using MigrationPair pair = await MigrationPair.StartAsync(scheme);
        string error = await KillDestinationMidMigrationAsync(pair, SlowBandwidth);
        StringAssert.Contains(error, $"the migration connection {pair.DestinationUri}");
        Console.WriteLine(error);
    }

    /// <summary>
    /// Migrates at <paramref name="bandwidth"/>, kills the destination once the migration is active,
    /// and checks that the source fails saying so while its guest goes on with nothing lost. Returns the error.
    /// </summary>
    internal static async Task<string> KillDestinationMidMigrationAsync(MigrationPair pair, long bandwidth)
    {
        await pair.SetSourceParametersAsync(new JsonObject { ["max-bandwidth"] = bandwidth });
        await pair.MigrateAsync();
        await pair.Source.WaitForMigrationStatusAsync("active", TimeSpan.FromSeconds(30));
        await Task.Delay(1000);
        pair.Destination.Kill();
        await pair.Destination.Exited.WaitAsync(TimeSpan.FromSeconds(10));

        JsonObject end = await pair.Source.WaitForMigrationEndAsync(TimeSpan.FromSeconds(30));
        Assert.AreEqual("failed", end["status"]?.GetValue<string>(), end.ToJsonString());
        string error = end["error-desc"]?.GetValue<string>() ?? "";
        StringAssert.StartsWith(error, $"Migration to {pair.DestinationUri} failed: ");
        StringAssert.EndsWith(error, "The guest keeps running on this host.");
        await AssertNothingLostAsync(pair.Source);
        return error;
    }

    /// <summary>The source guest runs, keeps printing, and its RAM passes the A/B check.</summary>
    internal static async Task AssertNothingLostAsync(ModularProcess source)
    {
        Assert.AreEqual("running", await source.RunStateAsync());
        int before = source.SerialCount('B');
        await source.WaitForSerialAsync('B', before + 2, TimeSpan.FromSeconds(60));
        AbRamCheckResult ram = await source.CheckRamAsync(Path.GetDirectoryName(source.SerialPath)!);
        Assert.IsTrue(ram.Passed, ram.Message);
        Assert.AreEqual("running", await source.RunStateAsync());
    }

    private static async Task FillAcceptQueueAsync(int port, List<Socket> fillers)
    {
        for (int i = 0; i < 8; i++)
        {
            var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            fillers.Add(client);
            using var timeout = new CancellationTokenSource(TimeSpan.FromMilliseconds(500));
            try
            {
                await client.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port), timeout.Token);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }

        Assert.Inconclusive("Could not fill the listener's accept queue; connect() never hung.");
    }
}
