using System.Text.Json.Nodes;
using Modular.Core.Qmp;

namespace Modular.Tests.Qmp;

/// <summary>query-status, stop, cont, quit and pmemsave against a machine double and byte-array guest RAM.</summary>
[TestClass]
public sealed class QmpMachineCommandsTests
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(10);
    private TempSocketDirectory _directory = null!;
    private QmpServer _server = null!;
    private ByteArrayGuestMemory _memory = null!;
    private FakeQmpMachine _machine = null!;
    private QmpClient _client = null!;

    [TestInitialize]
    public async Task Start()
    {
        _directory = new TempSocketDirectory();
        _server = QmpServer.Start(_directory.SocketPath());
        _memory = new ByteArrayGuestMemory(256 * 1024);
        _machine = new FakeQmpMachine(_server, _memory);
        QmpMachineCommands.Register(_server.Commands, _machine);
        _client = await QmpClient.ConnectAsync(_server.SocketPath);
    }

    [TestCleanup]
    public async Task Stop()
    {
        await _client.DisposeAsync();
        await _server.DisposeAsync();
        _directory.Dispose();
    }

    [TestMethod]
    [DataRow(QmpRunState.Running, true, "running")]
    [DataRow(QmpRunState.Paused, false, "paused")]
    [DataRow(QmpRunState.Prelaunch, false, "prelaunch")]
    [DataRow(QmpRunState.InMigrate, false, "inmigrate")]
    [DataRow(QmpRunState.PostMigrate, false, "postmigrate")]
    [DataRow(QmpRunState.FinishMigrate, false, "finish-migrate")]
    [DataRow(QmpRunState.Shutdown, false, "shutdown")]
    [DataRow(QmpRunState.GuestPanicked, false, "guest-panicked")]
    public async Task QueryStatus_ReportsQemuShape(QmpRunState state, bool running, string status)
    {
        _machine.RunState = state;
        JsonNode? result = await _client.ExecuteAsync("query-status");
        Assert.AreEqual($"{{\"running\": {(running ? "true" : "false")}, \"singlestep\": false, \"status\": \"{status}\"}}",
            JsonNodeText(result));
    }

    [TestMethod]
    public async Task Stop_StopsTheMachineAndStopEventArrives()
    {
        JsonNode? result = await _client.ExecuteAsync("stop");
        Assert.AreEqual("{}", JsonNodeText(result));
        CollectionAssert.AreEqual(new[] { "stop" }, _machine.Calls);
        QmpEvent stop = await _client.WaitForEventAsync("STOP", Wait);
        Assert.IsNull(stop.Data);
        Assert.IsTrue(Math.Abs((DateTimeOffset.UtcNow - stop.Timestamp).TotalSeconds) < 30, stop.Timestamp.ToString());
        Assert.AreEqual("{\"running\": false, \"singlestep\": false, \"status\": \"paused\"}",
            JsonNodeText(await _client.ExecuteAsync("query-status")));
    }

    [TestMethod]
    public async Task Cont_ResumesAPausedMachine()
    {
        _machine.RunState = QmpRunState.Paused;
        await _client.ExecuteAsync("cont");
        CollectionAssert.AreEqual(new[] { "resume" }, _machine.Calls);
        Assert.AreEqual("RESUME", (await _client.WaitForEventAsync("RESUME", Wait)).Name);
    }

    [TestMethod]
    [DataRow(QmpRunState.Shutdown, "Resetting the Virtual Machine is required")]
    [DataRow(QmpRunState.InternalError, "Resetting the Virtual Machine is required")]
    [DataRow(QmpRunState.FinishMigrate, "Migration is not finalized yet")]
    public async Task Cont_RefusesStatesAsQemu(QmpRunState state, string description)
    {
        _machine.RunState = state;
        var error = await Assert.ThrowsAsync<QmpErrorException>(() => _client.ExecuteAsync("cont"));
        Assert.AreEqual("GenericError", error.ErrorClass);
        Assert.AreEqual(description, error.Description);
        Assert.IsEmpty(_machine.Calls);
    }

    [TestMethod]
    public async Task Quit_RepliesThenTheMachineReportsShutdown()
    {
        Assert.AreEqual("{}", JsonNodeText(await _client.ExecuteAsync("quit")));
        CollectionAssert.AreEqual(new[] { "quit" }, _machine.Calls);
        QmpEvent shutdown = await _client.WaitForEventAsync("SHUTDOWN", Wait);
        Assert.AreEqual("{\"guest\": false, \"reason\": \"host-qmp-quit\"}", JsonNodeText(shutdown.Data));
    }

    [TestMethod]
    public async Task Pmemsave_WritesTheGuestBytes()
    {
        for (int i = 0; i < _memory.Bytes.Length; i++)
        {
            _memory.Bytes[i] = (byte)(i * 7 + (i >> 12));
        }

        string file = Path.Combine(_directory.Path, "dump.bin");
        const int address = 0x1000 + 5, size = 150_000;
        await _client.ExecuteAsync("pmemsave", new JsonObject { ["val"] = address, ["size"] = size, ["filename"] = file });
        CollectionAssert.AreEqual(_memory.Bytes.AsSpan(address, size).ToArray(), File.ReadAllBytes(file));
        Assert.IsGreaterThan(1, _memory.ReadCalls, "large dumps are read in chunks");
    }

    [TestMethod]
    public async Task Pmemsave_RefusesBadRangeFileAndArguments()
    {
        string file = Path.Combine(_directory.Path, "dump.bin");
        var error = await Assert.ThrowsAsync<QmpErrorException>(() =>
            _client.ExecuteAsync("pmemsave", new JsonObject { ["val"] = 0x3F000, ["size"] = 0x2000, ["filename"] = file }));
        Assert.AreEqual("Invalid addr 0x000000000003f000/size 8192 specified", error.Description);
        Assert.IsFalse(File.Exists(file), "nothing is written for a bad range");

        string unwritable = Path.Combine(_directory.Path, "missing-dir", "dump.bin");
        error = await Assert.ThrowsAsync<QmpErrorException>(() =>
            _client.ExecuteAsync("pmemsave", new JsonObject { ["val"] = 0, ["size"] = 16, ["filename"] = unwritable }));
        Assert.AreEqual($"Could not open '{unwritable}': No such file or directory", error.Description);

        error = await Assert.ThrowsAsync<QmpErrorException>(() =>
            _client.ExecuteAsync("pmemsave", new JsonObject { ["val"] = 0, ["size"] = 16, ["filename"] = _directory.Path }));
        Assert.AreEqual($"Could not open '{_directory.Path}': Is a directory", error.Description);

        error = await Assert.ThrowsAsync<QmpErrorException>(() =>
            _client.ExecuteAsync("pmemsave", new JsonObject { ["val"] = 0, ["size"] = 16 }));
        Assert.AreEqual("Parameter 'filename' is missing", error.Description);

        error = await Assert.ThrowsAsync<QmpErrorException>(() =>
            _client.ExecuteAsync("pmemsave", new JsonObject { ["val"] = "0", ["size"] = 16, ["filename"] = file }));
        Assert.AreEqual("Invalid parameter type for 'val', expected: integer", error.Description);

        error = await Assert.ThrowsAsync<QmpErrorException>(() =>
            _client.ExecuteAsync("pmemsave", new JsonObject { ["val"] = 0, ["size"] = 16, ["filename"] = file, ["cpu-index"] = 0 }));
        Assert.AreEqual("Parameter 'cpu-index' is unexpected", error.Description);
        Assert.AreEqual("GenericError", error.ErrorClass);
    }

    private static string JsonNodeText(JsonNode? node) =>
        node?.ToJsonString().Replace("\":", "\": ").Replace(",\"", ", \"") ?? "null";
}
