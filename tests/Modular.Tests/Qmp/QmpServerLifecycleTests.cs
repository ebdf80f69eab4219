using System.Net.Sockets;
using System.Runtime.Versioning;
using System.Text.Json.Nodes;
using Modular.Core.Qmp;

namespace Modular.Tests.Qmp;

/// <summary>Socket file handling, several clients, events and shutdown of the QMP server.</summary>
[TestClass]
[SupportedOSPlatform("linux")]
public sealed class QmpServerLifecycleTests
{
    private TempSocketDirectory _directory = null!;

    [TestInitialize]
    public void CreateDirectory() => _directory = new TempSocketDirectory();

    [TestCleanup]
    public void RemoveDirectory() => _directory.Dispose();

    [TestMethod]
    public async Task SocketFile_HasMode0600()
    {
        await using QmpServer server = QmpServer.Start(_directory.SocketPath());
        Assert.AreEqual(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(server.SocketPath));
    }

    [TestMethod]
    public async Task StaleSocketFile_IsRemovedAndReplaced()
    {
        string path = _directory.SocketPath();
        using (var dead = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            // .NET unlinks the file of a socket it bound when it is disposed; a process that dies does
            // not. Renaming the file away from the bound path imitates the crash.
            string bound = _directory.SocketPath("dying.sock");
            dead.Bind(new UnixDomainSocketEndPoint(bound));
            File.Move(bound, path);
        }

        Assert.IsTrue(File.Exists(path), "precondition: a dead socket left its file behind");
        await using QmpServer server = QmpServer.Start(path);
        await using QmpClient client = await QmpClient.ConnectAsync(path);
        Assert.IsNotNull(await client.ExecuteAsync("query-version"));
    }

    [TestMethod]
    public async Task SecondServerOnLivePath_FailsClearly()
    {
        string path = _directory.SocketPath();
        await using QmpServer first = QmpServer.Start(path);
        var error = Assert.Throws<QmpServerStartException>(() => QmpServer.Start(path));
        Assert.AreEqual($"Another process is already listening on the QMP socket '{path}'; stop it or choose another path.", error.Message);
        await using QmpClient client = await QmpClient.ConnectAsync(path);
        Assert.IsNotNull(await client.ExecuteAsync("query-version"), "the first server still answers");
    }

    [TestMethod]
    public void PathThatIsARegularFile_IsRefusedAndKept()
    {
        string path = _directory.SocketPath("precious.txt");
        File.WriteAllText(path, "keep me");
        var error = Assert.Throws<QmpServerStartException>(() => QmpServer.Start(path));
        Assert.AreEqual($"'{path}' exists and is not a unix socket; refusing to replace it with the QMP socket. Remove it or choose another path.", error.Message);
        Assert.AreEqual("keep me", File.ReadAllText(path));
    }

    [TestMethod]
    public void MissingDirectoryAndOverlongPath_FailClearly()
    {
        string missing = Path.Combine(_directory.Path, "no-such-dir", "qmp.sock");
        var error = Assert.Throws<QmpServerStartException>(() => QmpServer.Start(missing));
        StringAssert.StartsWith(error.Message, $"Cannot listen for QMP on '{missing}': ");
        StringAssert.EndsWith(error.Message, "Check that the directory exists and is writable.");

        string overlong = Path.Combine(_directory.Path, new string('s', 120));
        error = Assert.Throws<QmpServerStartException>(() => QmpServer.Start(overlong));
        Assert.AreEqual($"The QMP socket path '{overlong}' is longer than the 107 bytes a unix socket address can hold; choose a shorter path.", error.Message);
    }

    [TestMethod]
    public async Task Dispose_ClosesClientsAndRemovesSocketFile()
    {
        QmpServer server = QmpServer.Start(_directory.SocketPath());
        await using RawQmpConnection raw = await RawQmpConnection.ConnectNegotiatedAsync(server.SocketPath);
        await using QmpClient client = await QmpClient.ConnectAsync(server.SocketPath);
        await server.DisposeAsync();

        Assert.IsNull(await raw.ReadLineAsync(), "the raw client sees end of stream");
        Assert.IsTrue(client.Closed.WaitHandle.WaitOne(TimeSpan.FromSeconds(10)), "the QmpClient notices the close");
        await Assert.ThrowsAsync<QmpConnectionException>(() => client.ExecuteAsync("query-version"));
        Assert.IsFalse(File.Exists(server.SocketPath), "no socket file is left behind");
        Assert.AreEqual(0, server.ClientCount);
    }

    [TestMethod]
    public async Task TwoClients_RunCommandsAndBothGetEvents()
    {
        await using QmpServer server = QmpServer.Start(_directory.SocketPath());
        await using QmpClient first = await QmpClient.ConnectAsync(server.SocketPath);
        await using QmpClient second = await QmpClient.ConnectAsync(server.SocketPath);
        Assert.AreEqual(2, server.ClientCount);

        JsonNode?[] versions = await Task.WhenAll(first.ExecuteAsync("query-version"), second.ExecuteAsync("query-version"));
        Assert.AreEqual(versions[0]?.ToJsonString(), versions[1]?.ToJsonString());

        server.EmitEvent("STOP");
        Assert.AreEqual("STOP", (await first.WaitForEventAsync("STOP", TimeSpan.FromSeconds(10))).Name);
        Assert.AreEqual("STOP", (await second.WaitForEventAsync("STOP", TimeSpan.FromSeconds(10))).Name);
    }

    [TestMethod]
    public async Task Events_CarryDataAndTimestamp_AndSkipUnnegotiatedClients()
    {
        await using QmpServer server = QmpServer.Start(_directory.SocketPath());
        await using RawQmpConnection negotiated = await RawQmpConnection.ConnectNegotiatedAsync(server.SocketPath);
        await using RawQmpConnection waiting = await RawQmpConnection.ConnectAsync(server.SocketPath);
        await waiting.ReadLineAsync();
        while (server.ClientCount < 2)
        {
            await Task.Delay(10);
        }

        long before = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        var data = new JsonObject { ["guest"] = false, ["reason"] = "host-qmp-quit" };
        server.EmitEvent("SHUTDOWN", data);
        JsonObject message = JsonNode.Parse((await negotiated.ReadLineAsync())!)!.AsObject();
        Assert.AreEqual("SHUTDOWN", message["event"]?.GetValue<string>());
        Assert.IsTrue(JsonNode.DeepEquals(data, message["data"]), message.ToJsonString());
        long seconds = message["timestamp"]!["seconds"]!.GetValue<long>();
        long micro = message["timestamp"]!["microseconds"]!.GetValue<long>();
        Assert.IsTrue(seconds >= before && seconds <= before + 5, $"seconds {seconds} near {before}");
        Assert.IsTrue(micro is >= 0 and < 1_000_000, $"microseconds {micro}");

        server.EmitEvent("RESUME");
        Assert.AreEqual("RESUME", JsonNode.Parse((await negotiated.ReadLineAsync())!)!["event"]?.GetValue<string>());
        Assert.DoesNotContain("\"data\"", (await negotiated.RoundTripAsync("{\"execute\": \"query-version\"}")));

        // The client that never negotiated got neither event: its next line is its own reply.
        Assert.AreEqual("{\"return\": {}}", await waiting.RoundTripAsync("{\"execute\": \"qmp_capabilities\"}"));
    }
}
