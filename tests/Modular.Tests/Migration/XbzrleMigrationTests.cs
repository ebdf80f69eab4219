using System.Text.Json.Nodes;
using Modular.Core.Config;
using Modular.Core.Migration.State;
using Modular.Tests.Support;

namespace Modular.Tests.Migration;

/// <summary>QEMU's xbzrle capability in one process (synthetic accelerator, real tcp transport).</summary>
[TestClass]
public sealed class XbzrleMigrationTests
{
    private string _dir = "";

    [TestInitialize]
    public void Setup() => _dir = TestPluginCompiler.TempDirectory("xbzrle");

    [TestCleanup]
    public void Cleanup() => Directory.Delete(_dir, recursive: true);

    /// <summary>
    /// xbzrle between two machines in this process: a guest that changes one byte in each page it
    /// touches (synthetic) is migrated against a low max-bandwidth, so pages go again; after the first
    /// round they go as XBZRLE records of a few bytes, and the destination's RAM equals the source's.
    /// </summary>
    [TestMethod]
    public async Task Xbzrle_SendsPagesAgainAsDifferences_AndTheRamArrivesIntact()
    {
        await using InProcessMigrationPair pair = await InProcessMigrationPair.StartAsync(
            InProcessMigrationPair.SyntheticConfig(_dir, 3000, paused: false, "xbzrle"), InProcessMigrationPair.SyntheticConfig(_dir, 0, paused: true),
            configureSource: c => c.Settings.SetParameters(null, 16_000_000, null, null, xbzrleCacheSize: 64UL << 20));
        await pair.Outgoing.Completion.WaitAsync(TimeSpan.FromSeconds(120));
        await pair.Incoming.Completion.WaitAsync(TimeSpan.FromSeconds(30));

        Assert.AreEqual(MigrationStatus.Completed, pair.Outgoing.Status.Current, pair.Outgoing.Error);
        JsonObject reply = pair.SourceMigration.Query();
        JsonNode cache = reply["xbzrle-cache"] ?? throw new AssertFailedException($"no xbzrle-cache in {reply.ToJsonString()}");
        Assert.AreEqual(64L << 20, cache["cache-size"]!.GetValue<long>());
        long pages = cache["pages"]!.GetValue<long>();
        Assert.IsGreaterThan(0L, pages, reply.ToJsonString());
        Assert.IsLessThan(pages * 64, cache["bytes"]!.GetValue<long>(), "a one-byte change encodes in a few bytes, not a page");
        InProcessMigrationPair.AssertSameRam(pair.Source, pair.Destination);
    }

}
