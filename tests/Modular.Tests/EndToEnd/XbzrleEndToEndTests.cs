using System.Text.Json.Nodes;
using Modular.Tests.Support;

namespace Modular.Tests.EndToEnd;

/// <summary>
/// xbzrle between two real <c>modular</c> processes with the KVM A/B guest (256 MiB), which rewrites
/// all of its RAM about once a second, one byte per page, and at 50 MB/s would never converge with
/// whole pages: with a cache as large as its RAM (a smaller direct-mapped cache thrashes on a guest
/// that rewrites everything, in QEMU too), pages sent again go as XBZRLE records of a few bytes, the
/// migration converges, and the destination's RAM passes the A/B check with the guest running on there.
/// </summary>
[TestClass]
public sealed class XbzrleEndToEndTests
{
    [TestMethod]
    [DataRow("unix")]
    [DataRow("tcp")]
    [Timeout(300_000, CooperativeCancellation = true)]
    public async Task AbGuest_MigratesWithXbzrle_RamChecksOnTheDestination(string scheme)
    {
        await using MigrationPair pair = await MigrationPair.StartAsync(scheme);
        await pair.Source.Qmp.ExecuteAsync("migrate-set-capabilities", JsonNode.Parse("""{ "capabilities": [ { "capability": "xbzrle", "state": true } ] }""")!.AsObject());
        await pair.SetSourceParametersAsync(JsonNode.Parse("""{ "max-bandwidth": 50000000, "xbzrle-cache-size": 268435456 }""")!.AsObject());

        JsonObject result = await pair.MigrateToEndAsync(timeout: TimeSpan.FromSeconds(180));

        Assert.AreEqual("completed", result["status"]?.GetValue<string>(), result.ToJsonString());
        JsonNode cache = result["xbzrle-cache"] ?? throw new AssertFailedException($"no xbzrle-cache in {result.ToJsonString()}");
        long pages = cache["pages"]!.GetValue<long>();
        Assert.IsGreaterThan(10_000L, pages, result.ToJsonString());
        Assert.IsLessThan(pages * 100, cache["bytes"]!.GetValue<long>(), "a page the guest changed by a byte goes in a few bytes");
        Console.WriteLine($"{scheme}: {result["total-time"]} ms, downtime {result["downtime"]} ms, {result["ram"]!["transferred"]} bytes, xbzrle {cache.ToJsonString()}");
        await PrecopyEndToEndTests.AssertGuestContinuesAsync(pair.Destination);
    }

    /// <summary>The same through <c>modular migrate --xbzrle --max-bandwidth</c>: its summary says what xbzrle sent.</summary>
    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    public async Task ModularMigrate_Xbzrle_SaysWhatItSent()
    {
        await using MigrationPair pair = await MigrationPair.StartAsync("unix");
        await pair.SetSourceParametersAsync(JsonNode.Parse("""{ "xbzrle-cache-size": 268435456 }""")!.AsObject());

        CliProcess.Result result = await Task.Run(() => CliProcess.Run(TimeSpan.FromMinutes(4), "migrate", "--qmp", pair.Source.QmpSocket, "--xbzrle", "--max-bandwidth", "50M", pair.DestinationUri));

        Assert.AreEqual(0, result.ExitCode, result.StdOut + result.StdErr);
        StringAssert.Contains(result.StdOut, "status:       completed");
        StringAssert.Matches(result.StdOut, new System.Text.RegularExpressions.Regex(@"xbzrle: +[1-9][0-9]{4,} pages sent as differences in [0-9]+ bytes, [0-9]+ cache misses, 0 overflows"));
        await PrecopyEndToEndTests.AssertGuestContinuesAsync(pair.Destination);
    }
}
