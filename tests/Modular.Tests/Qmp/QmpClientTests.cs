using System.Net.Sockets;
using System.Text.Json.Nodes;
using Modular.Core.Qmp;

namespace Modular.Tests.Qmp;

/// <summary>The QmpClient against the real server: replies, errors, and events interleaved with replies.</summary>
[TestClass]
public sealed class QmpClientTests
{
    private TempSocketDirectory _directory = null!;
    private QmpServer _server = null!;

    [TestInitialize]
    public void Start()
    {
        _directory = new TempSocketDirectory();
        _server = QmpServer.Start(_directory.SocketPath());
        // Emits events while it runs, so they reach the client before and between replies.
        _server.Commands.Register("test-chatty", ["count"], (args, _) =>
        {
            long count = args.GetInt64("count");
            for (int i = 0; i < count; i++)
            {
                _server.EmitEvent("TICK", new JsonObject { ["n"] = i });
            }

            return ValueTask.FromResult<JsonNode?>(new JsonObject { ["emitted"] = count });
        });
    }

    [TestCleanup]
    public async Task Stop()
    {
        await _server.DisposeAsync();
        _directory.Dispose();
    }

    [TestMethod]
    public async Task Connect_ReadsGreetingAndNegotiates()
    {
        await using QmpClient client = await QmpClient.ConnectAsync(_server.SocketPath);
        Assert.AreEqual(_server.Version.Package, client.Greeting["version"]?["package"]?.GetValue<string>());
        Assert.IsEmpty(client.Greeting["capabilities"]!.AsArray());
        var error = await Assert.ThrowsAsync<QmpErrorException>(() => client.ExecuteAsync("qmp_capabilities"));
        Assert.AreEqual("CommandNotFound", error.ErrorClass);
    }

    [TestMethod]
    public async Task ErrorReply_BecomesQmpErrorException()
    {
        await using QmpClient client = await QmpClient.ConnectAsync(_server.SocketPath);
        var error = await Assert.ThrowsAsync<QmpErrorException>(() => client.ExecuteAsync("frobnicate"));
        Assert.AreEqual("frobnicate", error.Command);
        Assert.AreEqual("CommandNotFound", error.ErrorClass);
        Assert.AreEqual("The command frobnicate has not been found", error.Description);
        Assert.AreEqual("QMP command 'frobnicate' failed: CommandNotFound: The command frobnicate has not been found", error.Message);
    }

    [TestMethod]
    public async Task EventsInterleavedWithReplies_AreAllDelivered()
    {
        await using QmpClient client = await QmpClient.ConnectAsync(_server.SocketPath);
        Task<JsonNode?>[] calls = Enumerable.Range(0, 5)
            .Select(_ => client.ExecuteAsync("test-chatty", new JsonObject { ["count"] = 20 }))
            .ToArray();
        foreach (JsonNode? result in await Task.WhenAll(calls))
        {
            Assert.AreEqual(20, result?["emitted"]?.GetValue<int>());
        }

        var received = new List<QmpEvent>();
        for (int i = 0; i < 100; i++)
        {
            received.Add(await client.WaitForEventAsync("TICK", TimeSpan.FromSeconds(10)));
        }

        Assert.AreEqual(100, received.Count);
        Assert.AreEqual(5, received.Count(e => e.Data?["n"]?.GetValue<int>() == 19));
        Assert.IsEmpty(client.TakeReceivedEvents());
    }

    [TestMethod]
    public async Task WaitForEvent_KeepsOtherEventsAndTimesOutClearly()
    {
        await using QmpClient client = await QmpClient.ConnectAsync(_server.SocketPath);
        _server.EmitEvent("FIRST");
        _server.EmitEvent("SECOND");
        Assert.AreEqual("SECOND", (await client.WaitForEventAsync("SECOND", TimeSpan.FromSeconds(10))).Name);
        Assert.AreEqual("FIRST", (await client.WaitForEventAsync("FIRST", TimeSpan.FromSeconds(10))).Name);

        var timeout = await Assert.ThrowsAsync<TimeoutException>(() => client.WaitForEventAsync("NEVER", TimeSpan.FromMilliseconds(200)));
        Assert.AreEqual($"No QMP event NEVER arrived on '{_server.SocketPath}' within 0.2 s.", timeout.Message);
    }

    [TestMethod]
    public async Task ReadEvents_StreamsInArrivalOrder()
    {
        await using QmpClient client = await QmpClient.ConnectAsync(_server.SocketPath);
        await client.ExecuteAsync("test-chatty", new JsonObject { ["count"] = 3 });
        var names = new List<int>();
        using var cancel = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        await foreach (QmpEvent e in client.ReadEventsAsync(cancel.Token))
        {
            names.Add(e.Data!["n"]!.GetValue<int>());
            if (names.Count == 3)
            {
                break;
            }
        }

        CollectionAssert.AreEqual(new[] { 0, 1, 2 }, names);
    }

    [TestMethod]
    public async Task ConnectToNothing_FailsClearly()
    {
        string path = _directory.SocketPath("nobody.sock");
        var error = await Assert.ThrowsAsync<QmpConnectionException>(() => QmpClient.ConnectAsync(path));
        Assert.AreEqual($"Cannot connect to the QMP socket '{path}': there is no such file. Is the VM running with this QMP path?", error.Message);
    }

    [TestMethod]
    public async Task ConnectToASocketFileNobodyListensOn_SaysSo()
    {
        string path = _directory.SocketPath("stale.sock");
        // Bound but never listening: the socket file is there and connecting is refused, as with a
        // file left by a VM that ended (.NET removes the files it bound when it disposes the socket).
        using var bound = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        bound.Bind(new UnixDomainSocketEndPoint(path));
        var error = await Assert.ThrowsAsync<QmpConnectionException>(() => QmpClient.ConnectAsync(path));
        StringAssert.Contains(error.Message, $"'{path}': nothing listens on it (a socket file left behind by a VM that has ended?).");
    }

    [TestMethod]
    public async Task ConnectToARegularFile_SaysItIsNotASocket()
    {
        string path = _directory.SocketPath("plain.txt");
        await File.WriteAllTextAsync(path, "not a socket");
        var error = await Assert.ThrowsAsync<QmpConnectionException>(() => QmpClient.ConnectAsync(path));
        StringAssert.Contains(error.Message, $"'{path}': the file there is not a socket.");
        Assert.AreEqual("not a socket", await File.ReadAllTextAsync(path), "the file is left alone");
    }
}
