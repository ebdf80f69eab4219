using System.Text.Json.Nodes;
using Modular.Tests.Support;

namespace Modular.Tests.EndToEnd;

/// <summary>
/// calc-dirty-rate on a real <c>modular</c> process running the KVM A/B guest, which rewrites its RAM
/// all the time: both modes see it dirtying, dirty-bitmap through KVM's dirty log.
/// </summary>
[TestClass]
public sealed class DirtyRateEndToEndTests
{
    [TestMethod]
    [Timeout(240_000, CooperativeCancellation = true)]
    public async Task TheAbGuest_DirtiesMemory_InBothModes()
    {
        await using MigrationPair pair = MigrationPair.Create();
        await pair.StartSourceAsync(memory: 256UL << 20);
        var rates = new Dictionary<string, long>();
        foreach (string mode in new[] { "dirty-bitmap", "page-sampling" })
        {
            await pair.Source.Qmp.ExecuteAsync("calc-dirty-rate", JsonNode.Parse($$"""{ "calc-time": 1, "mode": "{{mode}}" }""")!.AsObject());
            JsonObject reply;
            var clock = System.Diagnostics.Stopwatch.StartNew();
            while ((reply = (JsonObject)(await pair.Source.Qmp.ExecuteAsync("query-dirty-rate"))!)["status"]!.GetValue<string>() != "measured")
            {
                Assert.IsLessThan(TimeSpan.FromSeconds(30), clock.Elapsed, reply.ToJsonString());
                await Task.Delay(100);
            }

            Assert.AreEqual(mode, reply["mode"]!.GetValue<string>());
            rates[mode] = reply["dirty-rate"]!.GetValue<long>();
        }

        Assert.IsGreaterThan(0L, rates["dirty-bitmap"], "KVM's dirty log sees the guest's writes");
        Assert.IsGreaterThan(0L, rates["page-sampling"], "sampled pages change");
        Console.WriteLine($"A/B guest, 256 MiB: dirty-bitmap {rates["dirty-bitmap"]} MB/s, page-sampling {rates["page-sampling"]} MB/s");
    }
}
