using System.Text.Json.Nodes;
using Modular.Core.Config;
using Modular.Core.Machine;
using Modular.Core.Migration.Engine;
using Modular.Core.Migration.Tls;
using Modular.Core.Plugins;
using Modular.Core.Qmp;
using Modular.Tests.Support;

namespace Modular.Tests.Qmp;

/// <summary>
/// Migration TLS over a real QMP socket: the tls-creds, tls-hostname and tls-authz parameters of
/// migrate-set-parameters and query-migrate-parameters (QEMU's StrOrNull: null resets), and
/// object-add / object-del of tls-creds-x509 objects, with QEMU's errors where QEMU has them.
/// </summary>
[TestClass]
public sealed class TlsQmpCommandsTests
{
    private static readonly Lazy<PluginCatalog> Plugins = new(() => PluginCatalog.Load([PluginCatalog.DefaultDirectory]));
    private string _dir = null!;
    private TempSocketDirectory _sockets = null!;
    private VirtualMachine _machine = null!;
    private MigrationController _migration = null!;
    private QmpServer _server = null!;
    private QmpClient _client = null!;

    [TestInitialize]
    public async Task Start()
    {
        _dir = TestPluginCompiler.TempDirectory("tls-qmp");
        _sockets = new TempSocketDirectory();
        string config = Path.Combine(_dir, "vm.json");
        File.WriteAllText(config, """{ "machine": { "accelerator": "synthetic", "memory": "16M" } }""");
        _machine = VirtualMachine.Create(ConfigLoader.Load(config), Plugins.Value, MachineStartMode.Boot);
        _migration = new MigrationController(_machine, Plugins.Value);
        _server = QmpServer.Start(_sockets.SocketPath());
        MigrationQmpCommands.Register(_server.Commands, _migration);
        _client = await QmpClient.ConnectAsync(_server.SocketPath);
    }

    [TestCleanup]
    public async Task Stop()
    {
        await _client.DisposeAsync();
        await _server.DisposeAsync();
        _machine.Dispose();
        _sockets.Dispose();
        Directory.Delete(_dir, recursive: true);
    }

    private async Task<JsonObject> ParametersAsync() => (JsonObject)(await _client.ExecuteAsync("query-migrate-parameters"))!;

    private async Task SetAsync(string json) => await _client.ExecuteAsync("migrate-set-parameters", JsonNode.Parse(json)!.AsObject());

    private async Task<QmpErrorException> RefusedAsync(string command, string json)
    {
        QmpErrorException error = await Assert.ThrowsExactlyAsync<QmpErrorException>(() => _client.ExecuteAsync(command, JsonNode.Parse(json)!.AsObject()));
        Assert.AreEqual("GenericError", error.ErrorClass);
        return error;
    }

    private string Credentials(string name = "certs")
    {
        string dir = Path.Combine(_dir, name);
        TlsCredentialsWriter.Write(dir, ["localhost"], TimeSpan.FromDays(1));
        return dir;
    }

    [TestMethod]
    public async Task TheTlsParameters_AreEmptyStringsByDefault_AndRoundTrip()
    {
        JsonObject before = await ParametersAsync();
        Assert.AreEqual(string.Empty, before["tls-creds"]!.GetValue<string>());
        Assert.AreEqual(string.Empty, before["tls-hostname"]!.GetValue<string>());
        Assert.AreEqual(string.Empty, before["tls-authz"]!.GetValue<string>());

        // An id no object has yet is accepted, as QEMU: the migration looks it up when it starts.
        await SetAsync("""{ "tls-creds": "tls0", "tls-hostname": "dest.example", "tls-authz": "" }""");

        JsonObject after = await ParametersAsync();
        Assert.AreEqual("tls0", after["tls-creds"]!.GetValue<string>());
        Assert.AreEqual("dest.example", after["tls-hostname"]!.GetValue<string>());
        Assert.AreEqual(string.Empty, after["tls-authz"]!.GetValue<string>());
        Assert.AreEqual("tls0", _migration.Settings.Snapshot().TlsCreds, "the migration's snapshot takes it");
    }

    [TestMethod]
    public async Task NullResetsAParameterToNone_AndLeavesTheOthers()
    {
        await SetAsync("""{ "tls-creds": "tls0", "tls-hostname": "dest.example" }""");

        await SetAsync("""{ "tls-creds": null, "tls-authz": null }""");

        JsonObject shown = await ParametersAsync();
        Assert.AreEqual(string.Empty, shown["tls-creds"]!.GetValue<string>());
        Assert.AreEqual("dest.example", shown["tls-hostname"]!.GetValue<string>());
    }

    [TestMethod]
    public async Task TlsAuthz_IsSetAndShown_AndNullResetsIt()
    {
        // Like tls-creds, an id no object has yet is accepted: an incoming migration looks it up.
        await _client.ExecuteAsync("migrate-set-parameters", JsonNode.Parse("""{ "tls-authz": "authz0" }""")!.AsObject());
        Assert.AreEqual("authz0", (await ParametersAsync())["tls-authz"]!.GetValue<string>());
        await _client.ExecuteAsync("migrate-set-parameters", JsonNode.Parse("""{ "tls-authz": null }""")!.AsObject());
        Assert.AreEqual(string.Empty, (await ParametersAsync())["tls-authz"]!.GetValue<string>());
    }

    [TestMethod]
    public async Task ObjectAdd_AuthzObjects_WithQemusErrors()
    {
        await _client.ExecuteAsync("object-add", new JsonObject { ["qom-type"] = "authz-simple", ["id"] = "auth0", ["identity"] = "CN=src.example" });
        string rules = Path.Combine(_dir, "rules.json");
        File.WriteAllText(rules, """{ "rules": [ { "match": "CN=*.example", "policy": "allow", "format": "glob" } ], "policy": "deny" }""");
        await _client.ExecuteAsync("object-add", new JsonObject { ["qom-type"] = "authz-listfile", ["id"] = "auth1", ["filename"] = rules });

        Assert.AreEqual("attempt to add duplicate property 'auth0' to object (type 'container')", (await RefusedAsync("object-add", """{ "qom-type": "authz-simple", "id": "auth0", "identity": "x" }""")).Description);
        Assert.AreEqual("Missing 'identity' property value", (await RefusedAsync("object-add", """{ "qom-type": "authz-simple", "id": "auth2" }""")).Description);
        Assert.AreEqual("Property 'authz-simple.dir' not found", (await RefusedAsync("object-add", """{ "qom-type": "authz-simple", "id": "auth2", "identity": "x", "dir": "/tmp" }""")).Description);
        File.WriteAllText(rules + ".bad", """{ "rules": [ { "match": "x", "policy": "maybe" } ] }""");
        StringAssert.Contains((await RefusedAsync("object-add", $$"""{ "qom-type": "authz-listfile", "id": "auth3", "filename": "{{rules}}.bad" }""")).Description, "has rules[0].policy 'maybe' (expected allow or deny)");
        StringAssert.Contains((await RefusedAsync("object-add", """{ "qom-type": "authz-listfile", "id": "auth3", "filename": "/nonexistent/rules.json" }""")).Description, "/nonexistent/rules.json cannot be read");

        await _client.ExecuteAsync("object-del", new JsonObject { ["id"] = "auth1" });
        Assert.AreEqual("object 'auth1' not found", (await RefusedAsync("object-del", """{ "id": "auth1" }""")).Description);
    }

    [TestMethod]
    public async Task ObjectAdd_AuthzList_RulesGivenInline_DecideAsQemu()
    {
        await _client.ExecuteAsync("object-add", JsonNode.Parse("""
            { "qom-type": "authz-list", "id": "auth0", "policy": "deny",
              "rules": [ { "match": "CN=blocked.example", "policy": "deny" },
                         { "match": "CN=*.example", "policy": "allow", "format": "glob" } ] }
            """)!.AsObject());
        TlsAuthorization list = _migration.Settings.TlsCredentials.ResolveAuthorization("auth0");
        Assert.IsTrue(list.IsAllowed("CN=src.example", out string why), why);
        StringAssert.Contains(why, "rule 1 of authz-list 'auth0' ('CN=*.example', glob) says allow");
        Assert.IsFalse(list.IsAllowed("CN=blocked.example", out why), "the first matching rule decides: " + why);
        Assert.IsFalse(list.IsAllowed("CN=src.other", out why));
        Assert.AreEqual("no rule of authz-list 'auth0' matches; its policy is deny", why);

        // No rules and policy allow: everyone the CA signed.
        await _client.ExecuteAsync("object-add", JsonNode.Parse("""{ "qom-type": "authz-list", "id": "auth1", "policy": "allow" }""")!.AsObject());
        Assert.IsTrue(_migration.Settings.TlsCredentials.ResolveAuthorization("auth1").IsAllowed("CN=anyone", out _));

        StringAssert.Contains((await RefusedAsync("object-add", """{ "qom-type": "authz-list", "id": "auth2", "rules": [ { "match": "CN=x" } ] }""")).Description, "authz-list 'auth2' has rules[0] without a \"policy\" (allow or deny)");
        Assert.AreEqual("Parameter 'policy' does not accept value 'maybe'", (await RefusedAsync("object-add", """{ "qom-type": "authz-list", "id": "auth2", "policy": "maybe" }""")).Description);
        Assert.AreEqual("Property 'authz-list.filename' not found", (await RefusedAsync("object-add", """{ "qom-type": "authz-list", "id": "auth2", "filename": "/x" }""")).Description);
        Assert.AreEqual("Property 'authz-simple.rules' not found", (await RefusedAsync("object-add", """{ "qom-type": "authz-simple", "id": "auth2", "identity": "x", "rules": [] }""")).Description);
    }

    [TestMethod]
    public async Task ANonString_IsRefusedAsQemuRefusesIt()
    {
        QmpErrorException error = await RefusedAsync("migrate-set-parameters", """{ "tls-hostname": 7 }""");

        Assert.AreEqual("Invalid parameter type for 'tls-hostname', expected: StrOrNull", error.Description);
    }

    [TestMethod]
    public async Task ObjectAdd_ReadsTheFiles_IntoTheMachinesCredentials()
    {
        string dir = Credentials();

        await _client.ExecuteAsync("object-add", new JsonObject { ["qom-type"] = "tls-creds-x509", ["id"] = "tls0", ["dir"] = dir, ["endpoint"] = "server", ["verify-peer"] = true });
        await _client.ExecuteAsync("object-add", new JsonObject { ["qom-type"] = "tls-creds-x509", ["id"] = "tls1", ["dir"] = dir });

        CollectionAssert.AreEqual(new[] { "tls0", "tls1" }, _migration.Settings.TlsCredentials.Ids.ToArray());
        TlsCredentials server = _migration.Settings.TlsCredentials.Resolve("tls0", TlsEndpoint.Server);
        Assert.IsNotNull(server.Certificate);
        Assert.IsTrue(server.VerifyPeer);
        TlsCredentials client = _migration.Settings.TlsCredentials.Resolve("tls1", TlsEndpoint.Client);
        Assert.IsTrue(client.VerifyPeer, "verify-peer defaults to true and endpoint to client, as in QEMU");
    }

    [TestMethod]
    public async Task ObjectAdd_WithAMissingFile_NamesTheFile_AndAddsNothing()
    {
        string dir = Credentials();
        File.Delete(Path.Combine(dir, "server-key.pem"));

        QmpErrorException error = await RefusedAsync("object-add", $$"""{ "qom-type": "tls-creds-x509", "id": "tls0", "dir": "{{dir}}", "endpoint": "server" }""");

        Assert.AreEqual($"TLS credentials 'tls0': {Path.Combine(dir, "server-key.pem")} does not exist; a server endpoint needs ca-cert.pem, server-cert.pem and server-key.pem in its dir (QEMU's layout).", error.Description);
        Assert.IsEmpty(_migration.Settings.TlsCredentials.Ids);
    }

    [TestMethod]
    public async Task ObjectAdd_OfAnIdInUse_IsRefusedWithQemusMessage()
    {
        string dir = Credentials();
        await _client.ExecuteAsync("object-add", new JsonObject { ["qom-type"] = "tls-creds-x509", ["id"] = "tls0", ["dir"] = dir });

        QmpErrorException error = await RefusedAsync("object-add", $$"""{ "qom-type": "tls-creds-x509", "id": "tls0", "dir": "{{dir}}", "endpoint": "server" }""");

        Assert.AreEqual("attempt to add duplicate property 'tls0' to object (type 'container')", error.Description);
        Assert.AreEqual(TlsEndpoint.Client, _migration.Settings.TlsCredentials.Resolve("tls0", TlsEndpoint.Client).Endpoint, "the first stays");
    }

    [TestMethod]
    [DataRow("""{ "qom-type": "secret", "id": "sec0" }""", "Object type 'secret' is not supported by Modular; supported: tls-creds-x509, authz-simple, authz-list, authz-listfile")]
    [DataRow("""{ "qom-type": "secret", "id": "sec0", "data": "s3cr3t", "format": "raw" }""", "Object type 'secret' is not supported by Modular; supported: tls-creds-x509, authz-simple, authz-list, authz-listfile")]
    [DataRow("""{ "qom-type": "tls-creds-x509", "id": "tls0" }""", "Missing 'dir' property value")]
    [DataRow("""{ "qom-type": "tls-creds-x509", "id": "tls0", "dir": "/x", "endpoint": "both" }""", "Parameter 'endpoint' does not accept value 'both'")]
    [DataRow("""{ "qom-type": "tls-creds-x509", "id": "0tls", "dir": "/x" }""", "Parameter 'id' expects an identifier (identifiers consist of letters, digits, '-', '.', '_', starting with a letter)")]
    [DataRow("""{ "qom-type": "tls-creds-x509", "dir": "/x" }""", "Parameter 'id' is missing")]
    [DataRow("""{ "qom-type": "tls-creds-x509", "id": "tls0", "dir": "/x", "priority": "NORMAL" }""", "Parameter 'priority' is unexpected")]
    [DataRow("""{ "qom-type": "tls-creds-x509", "id": "tls0", "dir": "/no/such/dir" }""", "TLS credentials 'tls0': the directory /no/such/dir does not exist; a client endpoint needs ca-cert.pem in its dir, and client-cert.pem with client-key.pem when the destination verifies its peer (QEMU's layout).")]
    public async Task ObjectAdd_RefusesBadArguments(string arguments, string message)
    {
        QmpErrorException error = await RefusedAsync("object-add", arguments);

        Assert.AreEqual(message, error.Description);
        Assert.IsEmpty(_migration.Settings.TlsCredentials.Ids);
    }

    [TestMethod]
    public async Task ObjectDel_RemovesTheCredentials_AndAnUnknownIdIsNotFound()
    {
        await _client.ExecuteAsync("object-add", new JsonObject { ["qom-type"] = "tls-creds-x509", ["id"] = "tls0", ["dir"] = Credentials() });

        await _client.ExecuteAsync("object-del", new JsonObject { ["id"] = "tls0" });

        Assert.IsEmpty(_migration.Settings.TlsCredentials.Ids);
        QmpErrorException again = await RefusedAsync("object-del", """{ "id": "tls0" }""");
        Assert.AreEqual("object 'tls0' not found", again.Description);
    }

    [TestMethod]
    public async Task QueryCommands_ListsObjectAddAndObjectDel()
    {
        var names = ((JsonArray)(await _client.ExecuteAsync("query-commands"))!).Select(c => c!["name"]!.GetValue<string>()).ToList();

        CollectionAssert.Contains(names, "object-add");
        CollectionAssert.Contains(names, "object-del");
    }
}
