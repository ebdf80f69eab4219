using System.Text.Json.Nodes;
using Modular.Core.Qmp;

namespace Modular.Tests.Qmp;

/// <summary>The wire protocol over a real unix socket, checked byte for byte against QEMU's replies.</summary>
[TestClass]
public sealed class QmpProtocolTests
{
    private static readonly QmpVersionInfo TestVersion = new(1, 2, 3, "Modular 1.2.3");
    private TempSocketDirectory _directory = null!;
    private QmpServer _server = null!;

    [TestInitialize]
    public void Start()
    {
        _directory = new TempSocketDirectory();
        _server = QmpServer.Start(_directory.SocketPath(), TestVersion);
        _server.Commands.Register("test-args", ["x", "u", "s", "b", "e"], (args, _) =>
        {
            long x = args.GetInt64("x");
            ulong? u = args.GetOptionalUInt64("u");
            string? s = args.GetOptionalString("s");
            bool? b = args.GetOptionalBoolean("b");
            string? e = args.Has("e") ? args.GetEnum("e", ["on", "off"]) : null;
            return ValueTask.FromResult<JsonNode?>(new JsonObject { ["x"] = x, ["u"] = u, ["s"] = s, ["b"] = b, ["e"] = e });
        });
        _server.Commands.Register("test-device-missing", (_, _) =>
            throw new QmpException(QmpErrorClass.DeviceNotFound, "Device 'serial9' not found"));
        _server.Commands.Register("test-crash", (_, _) => throw new InvalidOperationException("the handler broke"));
    }

    [TestCleanup]
    public async Task Stop()
    {
        await _server.DisposeAsync();
        _directory.Dispose();
    }

    [TestMethod]
    public async Task Greeting_HasQemuShapeWithVersionAndNoCapabilities()
    {
        await using RawQmpConnection connection = await RawQmpConnection.ConnectAsync(_server.SocketPath);
        Assert.AreEqual(
            "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 3, \"minor\": 2, \"major\": 1}, \"package\": \"Modular 1.2.3\"}, \"capabilities\": []}}",
            await connection.ReadLineAsync());
    }

    [TestMethod]
    public async Task BeforeNegotiation_EveryOtherCommandIsRefusedAsQemuDoes()
    {
        await using RawQmpConnection connection = await RawQmpConnection.ConnectAsync(_server.SocketPath);
        await connection.ReadLineAsync();
        const string expected = "{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Expecting capabilities negotiation with 'qmp_capabilities'\"}}";
        Assert.AreEqual(expected, await connection.RoundTripAsync("{\"execute\": \"query-version\"}"));
        Assert.AreEqual(expected, await connection.RoundTripAsync("{\"execute\": \"no-such-command\"}"));
        // Errors that are not CommandNotFound keep their own text, as in QEMU.
        Assert.AreEqual("{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input must be a JSON object\"}}",
            await connection.RoundTripAsync("[1]"));
        Assert.AreEqual("{\"return\": {}}", await connection.RoundTripAsync("{\"execute\": \"qmp_capabilities\"}"));
        Assert.AreEqual("{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"Capabilities negotiation is already complete, command ignored\"}}",
            await connection.RoundTripAsync("{\"execute\": \"qmp_capabilities\"}"));
    }

    [TestMethod]
    public async Task Negotiation_RefusesOobAndUnknownCapabilities()
    {
        await using RawQmpConnection connection = await RawQmpConnection.ConnectAsync(_server.SocketPath);
        await connection.ReadLineAsync();
        Assert.AreEqual("{\"error\": {\"class\": \"GenericError\", \"desc\": \"Capability oob not available\"}}",
            await connection.RoundTripAsync("{\"execute\": \"qmp_capabilities\", \"arguments\": {\"enable\": [\"oob\"]}}"));
        Assert.AreEqual("{\"error\": {\"class\": \"GenericError\", \"desc\": \"Parameter 'enable[0]' does not accept value 'turbo'\"}}",
            await connection.RoundTripAsync("{\"execute\": \"qmp_capabilities\", \"arguments\": {\"enable\": [\"turbo\"]}}"));
        Assert.AreEqual("{\"error\": {\"class\": \"GenericError\", \"desc\": \"Parameter 'x' is unexpected\"}}",
            await connection.RoundTripAsync("{\"execute\": \"qmp_capabilities\", \"arguments\": {\"x\": 1}}"));
        Assert.AreEqual("{\"return\": {}}",
            await connection.RoundTripAsync("{\"execute\": \"qmp_capabilities\", \"arguments\": {\"enable\": []}}"));
    }

    [TestMethod]
    public async Task Id_IsEchoedOnSuccessAndError()
    {
        await using RawQmpConnection connection = await RawQmpConnection.ConnectNegotiatedAsync(_server.SocketPath);
        JsonObject reply = await connection.RoundTripJsonAsync("{\"execute\": \"query-version\", \"id\": {\"tag\": [1, \"two\"]}}");
        Assert.IsTrue(JsonNode.DeepEquals(JsonNode.Parse("{\"tag\": [1, \"two\"]}"), reply["id"]), reply.ToJsonString());
        Assert.AreEqual("{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command nope has not been found\"}, \"id\": \"x-7\"}",
            await connection.RoundTripAsync("{\"execute\": \"nope\", \"id\": \"x-7\"}"));
        StringAssert.EndsWith(await connection.RoundTripAsync("{\"id\": 42, \"execute\": \"query-version\"}"), ", \"id\": 42}");
    }

    [TestMethod]
    public async Task GarbageInput_GetsParseErrorAndConnectionStaysUsable()
    {
        await using RawQmpConnection connection = await RawQmpConnection.ConnectNegotiatedAsync(_server.SocketPath);
        Assert.AreEqual("{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expecting value\"}}",
            await connection.RoundTripAsync("{ \"execute\": }"));
        string broken = await connection.RoundTripAsync("{\"execute\" \"stop\"}");
        StringAssert.StartsWith(broken, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, ");
        // A control character abandons a half-sent command (the spec's way to resynchronise).
        await connection.SendAsync("{\"execute\": \"query-");
        Assert.AreEqual("{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '\\u0001'\"}}",
            await connection.RoundTripAsync("\u0001"));
        await connection.SendBytesAsync([0xFF]);
        Assert.AreEqual("{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '\\uFFFD'\"}}",
            await connection.ReadLineAsync());
        JsonObject version = await connection.RoundTripJsonAsync("{\"execute\": \"query-version\"}");
        Assert.AreEqual(2, version["return"]?["qemu"]?["minor"]?.GetValue<int>());
    }

    [TestMethod]
    public async Task NonObjectInput_IsRefused()
    {
        await using RawQmpConnection connection = await RawQmpConnection.ConnectNegotiatedAsync(_server.SocketPath);
        const string expected = "{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input must be a JSON object\"}}";
        Assert.AreEqual(expected, await connection.RoundTripAsync("[\"execute\", \"stop\"]"));
        Assert.AreEqual(expected, await connection.RoundTripAsync("42\n"));
        Assert.AreEqual(expected, await connection.RoundTripAsync("\"query-version\""));
    }

    [TestMethod]
    public async Task MalformedRequests_GetQemuMessages()
    {
        await using RawQmpConnection connection = await RawQmpConnection.ConnectNegotiatedAsync(_server.SocketPath);
        Assert.AreEqual("{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input lacks member 'execute'\"}}",
            await connection.RoundTripAsync("{\"arguments\": {}}"));
        Assert.AreEqual("{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input member 'execute' must be a string\"}}",
            await connection.RoundTripAsync("{\"execute\": 1}"));
        Assert.AreEqual("{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input member 'arguments' must be an object\"}}",
            await connection.RoundTripAsync("{\"execute\": \"query-version\", \"arguments\": []}"));
        Assert.AreEqual("{\"error\": {\"class\": \"GenericError\", \"desc\": \"QMP input member 'exec-oob' is unexpected\"}, \"id\": 1}",
            await connection.RoundTripAsync("{\"exec-oob\": \"query-version\", \"id\": 1}"));
    }

    [TestMethod]
    public async Task Framing_FollowsBracesNotLines()
    {
        await using RawQmpConnection connection = await RawQmpConnection.ConnectNegotiatedAsync(_server.SocketPath);
        await connection.SendAsync("{\"execute\":\n  \"query-version\",\n \"id\": 1}{'execute': 'query-version', 'id': 'it''s'}");
        Assert.AreEqual(1, JsonNode.Parse((await connection.ReadLineAsync())!)!["id"]!.GetValue<int>());
        // The second request uses QEMU's single-quote extension; the '' splits into two strings, so it is a parse error.
        StringAssert.StartsWith(await connection.ReadLineAsync(), "{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error");
        JsonObject quoted = await connection.RoundTripJsonAsync("{'execute': 'query-version', 'id': 'it\\'s \"q\"'}");
        Assert.AreEqual("it's \"q\"", quoted["id"]?.GetValue<string>());
    }

    [TestMethod]
    public async Task UnknownCommand_IsCommandNotFound()
    {
        await using RawQmpConnection connection = await RawQmpConnection.ConnectNegotiatedAsync(_server.SocketPath);
        Assert.AreEqual("{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command foo has not been found\"}}",
            await connection.RoundTripAsync("{\"execute\": \"foo\"}"));
    }

    [TestMethod]
    public async Task BuiltIns_QueryVersionAndQueryCommands()
    {
        await using RawQmpConnection connection = await RawQmpConnection.ConnectNegotiatedAsync(_server.SocketPath);
        Assert.AreEqual("{\"return\": {\"qemu\": {\"micro\": 3, \"minor\": 2, \"major\": 1}, \"package\": \"Modular 1.2.3\"}}",
            await connection.RoundTripAsync("{\"execute\": \"query-version\"}"));
        JsonObject commands = await connection.RoundTripJsonAsync("{\"execute\": \"query-commands\"}");
        string[] names = commands["return"]!.AsArray().Select(c => c!["name"]!.GetValue<string>()).ToArray();
        CollectionAssert.AreEquivalent(
            new[] { "qmp_capabilities", "query-commands", "query-version", "test-args", "test-crash", "test-device-missing" }, names);
    }

    [TestMethod]
    public async Task Arguments_AreCheckedWithQemuMessages()
    {
        await using RawQmpConnection connection = await RawQmpConnection.ConnectNegotiatedAsync(_server.SocketPath);
        async Task<string> Desc(string arguments) =>
            (await connection.RoundTripJsonAsync($"{{\"execute\": \"test-args\", \"arguments\": {arguments}}}"))["error"]!["desc"]!.GetValue<string>();

        Assert.AreEqual("Parameter 'x' is missing", await Desc("{}"));
        Assert.AreEqual("Invalid parameter type for 'x', expected: integer", await Desc("{\"x\": \"7\"}"));
        Assert.AreEqual("Invalid parameter type for 'x', expected: integer", await Desc("{\"x\": 1.5}"));
        Assert.AreEqual("Invalid parameter type for 'x', expected: integer", await Desc("{\"x\": null}"));
        Assert.AreEqual("Parameter 'u' expects uint64", await Desc("{\"x\": 1, \"u\": \"big\"}"));
        Assert.AreEqual("Invalid parameter type for 's', expected: string", await Desc("{\"x\": 1, \"s\": 5}"));
        Assert.AreEqual("Invalid parameter type for 'b', expected: boolean", await Desc("{\"x\": 1, \"b\": \"yes\"}"));
        Assert.AreEqual("Parameter 'e' does not accept value 'maybe'", await Desc("{\"x\": 1, \"e\": \"maybe\"}"));
        Assert.AreEqual("Parameter 'y' is unexpected", await Desc("{\"x\": 1, \"y\": 2}"));
        Assert.AreEqual("{\"return\": {\"x\": -3, \"u\": 18446744073709551615, \"s\": \"hi\", \"b\": true, \"e\": \"on\"}}",
            await connection.RoundTripAsync(
                "{\"execute\": \"test-args\", \"arguments\": {\"x\": -3, \"u\": 18446744073709551615, \"s\": \"hi\", \"b\": true, \"e\": \"on\"}}"));
    }

    [TestMethod]
    public async Task HandlerErrors_KeepTheirClassOrBecomeGenericError()
    {
        await using RawQmpConnection connection = await RawQmpConnection.ConnectNegotiatedAsync(_server.SocketPath);
        Assert.AreEqual("{\"error\": {\"class\": \"DeviceNotFound\", \"desc\": \"Device 'serial9' not found\"}}",
            await connection.RoundTripAsync("{\"execute\": \"test-device-missing\"}"));
        Assert.AreEqual("{\"error\": {\"class\": \"GenericError\", \"desc\": \"the handler broke\"}}",
            await connection.RoundTripAsync("{\"execute\": \"test-crash\"}"));
        StringAssert.StartsWith(await connection.RoundTripAsync("{\"execute\": \"query-version\"}"), "{\"return\": ");
    }
}
