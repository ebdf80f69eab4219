using System.Text.Json.Nodes;
using Modular.Core.Qmp;
using Modular.Tests.Support;

namespace Modular.Tests.EndToEnd;

/// <summary>
/// Precopy with QEMU's multifd capability between two real <c>modular</c> processes and the KVM A/B
/// guest (256 MiB): normal pages travel on extra channels, straight from guest RAM into guest RAM;
/// the migration completes, the destination's RAM passes the A/B check and the guest goes on there.
/// Also what a user gets wrong: multifd on one side only, and multifd with postcopy.
/// </summary>
[TestClass]
public sealed class MultifdEndToEndTests
{
    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    public async Task Tcp_ThreeChannels_Completes_RamChecks_GuestContinues() => await MigrateWithMultifdAsync("tcp", channels: 3);

    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    public async Task Unix_OneChannel_Completes_RamChecks_GuestContinues() => await MigrateWithMultifdAsync("unix", channels: 1);

    private static async Task MigrateWithMultifdAsync(string scheme, int channels)
    {
        await using MigrationPair pair = await StartWithMultifdAsync(scheme, channels);

        JsonObject parameters = (JsonObject)(await pair.Source.Qmp.ExecuteAsync("query-migrate-parameters"))!;
        Assert.AreEqual(channels, parameters["multifd-channels"]!.GetValue<int>());

        JsonObject result = await pair.MigrateToEndAsync();
        Assert.AreEqual("completed", result["status"]?.GetValue<string>(), result.ToJsonString());
        JsonNode ram = result["ram"]!;
        Assert.IsGreaterThan(1000L, ram["normal"]!.GetValue<long>(), "the A/B guest's pages are not zero");
        long multifdBytes = ram["multifd-bytes"]!.GetValue<long>();
        Assert.IsGreaterThan(ram["normal"]!.GetValue<long>() * 4096, multifdBytes, "every normal page went through the channels, with packet headers");
        Assert.IsGreaterThanOrEqualTo(multifdBytes, ram["transferred"]!.GetValue<long>(), "transferred counts the channels' bytes");

        await PrecopyEndToEndTests.AssertGuestContinuesAsync(pair.Destination);
        JsonObject incoming = await pair.Destination.QueryMigrateAsync();
        Assert.AreEqual("completed", incoming["status"]?.GetValue<string>(), incoming.ToJsonString());
        Assert.IsGreaterThan(0L, incoming["ram"]?["multifd-bytes"]?.GetValue<long>() ?? 0, incoming.ToJsonString());
    }

    [TestMethod]
    [Timeout(240_000, CooperativeCancellation = true)]
    public async Task CancelWhileChannelsCarryPages_SourceKeepsRunning_NothingLost()
    {
        await using MigrationPair pair = await StartWithMultifdAsync("unix", channels: 2);
        await PrecopyFailureTests.CancelMidMigrationAsync(pair, 64L << 20, active =>
            Assert.IsGreaterThan(0L, active["ram"]!["multifd-bytes"]!.GetValue<long>(), "the channels carried pages before the cancel"));
    }

    [TestMethod]
    [Timeout(240_000, CooperativeCancellation = true)]
    public async Task DestinationKilledWhileChannelsCarryPages_SourceFailsClearly_GuestRunsOnSource()
    {
        await using MigrationPair pair = await StartWithMultifdAsync("tcp", channels: 2);
        string error = await PrecopyFailureTests.KillDestinationMidMigrationAsync(pair, 64L << 20);
        Console.WriteLine(error);
    }

    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    public async Task MultifdOnTheSourceOnly_FailsNamingTheDestinationsSetting_GuestKeepsRunning()
    {
        await using MigrationPair pair = await MigrationPair.StartAsync("tcp");
        await EnableMultifdAsync(pair.Source.Qmp, channels: 2);

        JsonObject result = await pair.MigrateToEndAsync();
        Assert.AreEqual("failed", result["status"]?.GetValue<string>(), result.ToJsonString());
        string error = result["error-desc"]!.GetValue<string>();
        StringAssert.Contains(error, "multifd channel 1");
        StringAssert.Contains(error, "on the destination");
        Assert.AreEqual("running", await pair.Source.RunStateAsync());
        int before = pair.Source.SerialCount('B');
        await pair.Source.WaitForSerialAsync('B', before + 1, TimeSpan.FromSeconds(60));
    }

    [TestMethod]
    [Timeout(120_000, CooperativeCancellation = true)]
    public async Task MultifdWithPostcopy_IsRefusedAsQemuDoes_AndBadChannelCountsToo()
    {
        await using MigrationPair pair = MigrationPair.Create();
        await pair.StartSourceAsync();
        QmpErrorException both = await Assert.ThrowsExactlyAsync<QmpErrorException>(() => pair.Source.Qmp.ExecuteAsync("migrate-set-capabilities", new JsonObject
        {
            ["capabilities"] = new JsonArray
            {
                new JsonObject { ["capability"] = "multifd", ["state"] = true },
                new JsonObject { ["capability"] = "postcopy-ram", ["state"] = true },
            },
        }));
        StringAssert.Contains(both.Message, "Postcopy is not yet compatible with multifd");
        JsonArray capabilities = (JsonArray)(await pair.Source.Qmp.ExecuteAsync("query-migrate-capabilities"))!;
        Assert.IsFalse(capabilities.Any(c => c!["capability"]!.GetValue<string>() is "multifd" or "postcopy-ram" && c["state"]!.GetValue<bool>()), "all or nothing: neither was set");

        QmpErrorException zero = await Assert.ThrowsExactlyAsync<QmpErrorException>(() => pair.Source.Qmp.ExecuteAsync("migrate-set-parameters", new JsonObject { ["multifd-channels"] = 0 }));
        StringAssert.Contains(zero.Message, "Parameter 'multifd-channels' expects a value between 1 and 255");
    }

    private static async Task<MigrationPair> StartWithMultifdAsync(string scheme, int channels)
    {
        MigrationPair pair = await MigrationPair.StartAsync(scheme);
        try
        {
            foreach (ModularProcess side in new[] { pair.Source, pair.Destination })
            {
                await EnableMultifdAsync(side.Qmp, channels);
            }

            return pair;
        }
        catch
        {
            await pair.DisposeAsync();
            throw;
        }
    }

    private static async Task EnableMultifdAsync(QmpClient qmp, int channels)
    {
        await qmp.ExecuteAsync("migrate-set-capabilities", new JsonObject
        {
            ["capabilities"] = new JsonArray { new JsonObject { ["capability"] = "multifd", ["state"] = true } },
        });
        await qmp.ExecuteAsync("migrate-set-parameters", new JsonObject { ["multifd-channels"] = channels });
    }
}
