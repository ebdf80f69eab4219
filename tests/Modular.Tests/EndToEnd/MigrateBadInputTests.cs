using System.Net;
using System.Net.Sockets;
using System.Text.Json.Nodes;
using Modular.Core.Qmp;
using Modular.Tests.Support;

namespace Modular.Tests.EndToEnd;

/// <summary>
/// migrate with a URI that cannot work: nobody listening, an unknown scheme, a file that cannot be
/// written. One running source serves all of them; each test checks it still runs afterwards.
/// </summary>
[TestClass]
public sealed class MigrateBadInputTests
{
    private static MigrationPair? s_pair;

    private static ModularProcess Source => s_pair!.Source;

    [ClassInitialize]
    public static async Task StartSourceAsync(TestContext context)
    {
        _ = context;
        s_pair = MigrationPair.Create();
        await s_pair.StartSourceAsync();
    }

    [ClassCleanup]
    public static async Task StopSourceAsync()
    {
        if (s_pair is not null)
        {
            await s_pair.DisposeAsync();
        }
    }

    [TestMethod]
    [Timeout(60_000, CooperativeCancellation = true)]
    public async Task ConnectionRefused_FailsWithClearMessage()
    {
        int port;
        using (var probe = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp))
        {
            probe.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            port = ((IPEndPoint)probe.LocalEndPoint!).Port;
        }

        JsonObject end = await FailAsync($"tcp:127.0.0.1:{port}");
        Assert.AreEqual(
            $"Migration to tcp:127.0.0.1:{port} failed: Cannot connect to tcp:127.0.0.1:{port}: connection refused. Is the destination listening there (migrate-incoming tcp:127.0.0.1:{port})? The guest keeps running on this host.",
            end["error-desc"]?.GetValue<string>());
    }

    [TestMethod]
    [Timeout(60_000, CooperativeCancellation = true)]
    public async Task UnixSocketMissing_FailsWithClearMessage()
    {
        string path = s_pair!.PathFor("nobody.sock");
        JsonObject end = await FailAsync("unix:" + path);
        StringAssert.Contains(end["error-desc"]?.GetValue<string>(), $"Cannot connect to unix:{path}");
    }

    [TestMethod]
    [Timeout(60_000, CooperativeCancellation = true)]
    public async Task UnknownScheme_ListsTheSchemesThePluginsOffer()
    {
        QmpErrorException error = await Assert.ThrowsExactlyAsync<QmpErrorException>(
            () => Source.Qmp.ExecuteAsync("migrate", new JsonObject { ["uri"] = "carrier-pigeon:coop:7" }));
        Assert.AreEqual("GenericError", error.ErrorClass);
        StringAssert.Contains(error.Description, "carrier-pigeon");
        foreach (string scheme in new[] { "tcp", "unix", "file" })
        {
            StringAssert.Contains(error.Description, scheme);
        }

        Assert.AreEqual("running", await Source.RunStateAsync());
    }

    [TestMethod]
    [Timeout(60_000, CooperativeCancellation = true)]
    public async Task FileThatCannotBeWritten_FailsWithClearMessage()
    {
        JsonObject end = await FailAsync("file:/nonexistent-dir/x");
        string error = end["error-desc"]?.GetValue<string>() ?? "";
        StringAssert.StartsWith(error, "Migration to file:/nonexistent-dir/x failed: Cannot write the migration file '/nonexistent-dir/x'");
        StringAssert.EndsWith(error, "The guest keeps running on this host.");
    }

    private static async Task<JsonObject> FailAsync(string uri)
    {
        await Source.Qmp.ExecuteAsync("migrate", new JsonObject { ["uri"] = uri });
        JsonObject end = await Source.WaitForMigrationEndAsync(TimeSpan.FromSeconds(30));
        Assert.AreEqual("failed", end["status"]?.GetValue<string>(), end.ToJsonString());
        Assert.AreEqual("running", await Source.RunStateAsync());
        return end;
    }
}
