using Modular.Core.Config;
using Modular.Core.Migration.Engine;
using Modular.Core.Migration.Tls;

namespace Modular.Tests.Config;

/// <summary>
/// The config's top-level objects list (QEMU's object-add shape: tls-creds-x509, authz-simple,
/// authz-listfile), the tls-creds, tls-hostname and tls-authz parameters, and the objects' files
/// read when the machine's migration settings are made.
/// </summary>
[TestClass]
public sealed class ConfigObjectsTests : ConfigFileTestBase
{
    protected override string DirectoryPrefix => "config-objects";

    [TestMethod]
    public void ObjectsAreReadWithQemusDefaults_AndDirRelativeToTheConfigFile()
    {
        string path = Write("""
            {
              "objects": [
                { "qom-type": "tls-creds-x509", "id": "tls0", "dir": "certs/server", "endpoint": "server", "verify-peer": false },
                { "qom-type": "tls-creds-x509", "id": "tls1", "dir": "/etc/pki/qemu" }
              ],
              "migration": { "parameters": { "tls-creds": "tls0", "tls-hostname": "dest.example" } }
            }
            """);

        MigrationConfig migration = ConfigLoader.Load(path).Migration;

        Assert.HasCount(2, migration.TlsObjects);
        Assert.AreEqual(new TlsCredentialsConfig("tls0", Path.Combine(Dir, "certs", "server"), TlsEndpoint.Server, VerifyPeer: false, "objects[0]"), migration.TlsObjects[0]);
        Assert.AreEqual(new TlsCredentialsConfig("tls1", "/etc/pki/qemu", TlsEndpoint.Client, VerifyPeer: true, "objects[1]"), migration.TlsObjects[1], "endpoint client and verify-peer true by default, as QEMU");
        Assert.AreEqual("tls0", migration.TlsCreds);
        Assert.AreEqual("dest.example", migration.TlsHostname);
    }

    [TestMethod]
    public void WithoutObjectsOrTlsParameters_ThereAreNone()
    {
        MigrationConfig migration = ConfigLoader.Load(Write("""{ "objects": [] }""")).Migration;

        Assert.IsEmpty(migration.TlsObjects);
        Assert.AreEqual(string.Empty, migration.TlsCreds);
        Assert.AreEqual(string.Empty, migration.TlsHostname);
        Assert.IsEmpty(ConfigLoader.Load(null).Migration.TlsObjects);
    }

    [TestMethod]
    public void AnUnknownQomTypeListsTheSupportedOne()
    {
        ConfigException ex = Fails(Write("""{ "objects": [ { "qom-type": "secret", "id": "s0", "data": "x" } ] }"""));

        Assert.AreEqual("objects[0].qom-type: object type 'secret' is not supported by Modular; supported: tls-creds-x509, authz-simple, authz-list, authz-listfile.", ex.Errors.Single());
    }

    [TestMethod]
    public void MissingQomTypeIdAndDirAreNamed()
    {
        ConfigException ex = Fails(Write("""{ "objects": [ { "id": "a", "dir": "d" }, { "qom-type": "tls-creds-x509" } ] }"""));

        CollectionAssert.AreEquivalent(
            new[]
            {
                "objects[0].qom-type: missing; every object needs a qom-type, and Modular supports: tls-creds-x509.",
                "objects[1].id: missing; every object needs an id (migration.parameters.tls-creds names it).",
                "objects[1].dir: missing; give the directory of the credentials' PEM files (ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem, client-key.pem), relative to the config file.",
            },
            ex.Errors.ToList());
    }

    [TestMethod]
    public void ABadEndpointOrVerifyPeerIsNamed()
    {
        ConfigException ex = Fails(Write("""{ "objects": [ { "qom-type": "tls-creds-x509", "id": "a", "dir": "d", "endpoint": "both", "verify-peer": "maybe" } ] }"""));

        CollectionAssert.AreEquivalent(
            new[]
            {
                "objects[0].endpoint: expected one of client, server, found 'both' (client on the migration source, server on the destination).",
                "objects[0].verify-peer: expected true or false, found 'maybe'.",
            },
            ex.Errors.ToList());
    }

    [TestMethod]
    public void ADuplicateIdNamesTheFirstObject()
    {
        ConfigException ex = Fails(Write("""{ "objects": [ { "qom-type": "tls-creds-x509", "id": "tls0", "dir": "a" }, { "qom-type": "tls-creds-x509", "id": "tls0", "dir": "b" } ] }"""));

        Assert.AreEqual("objects[1].id: 'tls0' is already used by objects[0]; object ids must be unique.", ex.Errors.Single());
    }

    [TestMethod]
    public void AnIdMustBeAnIdentifier()
    {
        ConfigException ex = Fails(Write("""{ "objects": [ { "qom-type": "tls-creds-x509", "id": "tls 0", "dir": "a" } ] }"""));

        Assert.AreEqual("objects[0].id: 'tls 0' is not an identifier; ids consist of letters, digits, '-', '.', '_', starting with a letter (as QEMU's).", ex.Errors.Single());
    }

    [TestMethod]
    public void UnknownKeysAreNamedWithTheNearestKnownKey()
    {
        ConfigException ex = Fails(Write("""{ "objects": [ { "qom-type": "tls-creds-x509", "id": "a", "dir": "d", "verify_peer": true, "priority": "NORMAL", "dir-x": { "a": 1 } } ] }"""));

        CollectionAssert.AreEquivalent(
            new[]
            {
                "objects[0].verify_peer: unknown key 'verify_peer' in a tls-creds-x509 object; did you mean 'verify-peer'?",
                "objects[0].priority: unknown key 'priority' in a tls-creds-x509 object; known keys: qom-type, id, dir, endpoint, verify-peer, sanity-check.",
                "objects[0].dir-x: expected a string or boolean, found an object or list.",
            },
            ex.Errors.ToList());
    }

    [TestMethod]
    public void ObjectsMustBeAList()
    {
        ConfigException single = Fails(Write("""{ "objects": "tls0" }"""));
        ConfigException keyed = Fails(Write("""{ "objects": { "tls0": { "qom-type": "tls-creds-x509" } } }"""));

        Assert.AreEqual("objects: expected a list of objects like [{\"qom-type\": \"tls-creds-x509\", \"id\": \"tls0\", \"dir\": \"certs\"}], found a single value.", single.Errors.Single());
        Assert.AreEqual("objects: expected a list of objects, found the key 'tls0'; write objects as [{\"qom-type\": ..., \"id\": ...}, ...].", keyed.Errors.Single());
    }

    [TestMethod]
    public void TlsCredsMustNameAnObject()
    {
        ConfigException none = Fails(Write("""{ "migration": { "parameters": { "tls-creds": "tls0" } } }"""));
        ConfigException other = Fails(Write("""{ "objects": [ { "qom-type": "tls-creds-x509", "id": "tlsA", "dir": "d" } ], "migration": { "parameters": { "tls-creds": "tls0" } } }"""));

        Assert.AreEqual("migration.parameters.tls-creds: 'tls0' is not the id of an object in objects (objects has none); add {\"qom-type\": \"tls-creds-x509\", \"id\": \"tls0\", \"dir\": ...} to objects or name one of its ids.", none.Errors.Single());
        Assert.AreEqual("migration.parameters.tls-creds: 'tls0' is not the id of an object in objects (objects has 'tlsA'); add {\"qom-type\": \"tls-creds-x509\", \"id\": \"tls0\", \"dir\": ...} to objects or name one of its ids.", other.Errors.Single());
    }

    [TestMethod]
    public void OverridesCanAddAnObject()
    {
        MigrationConfig migration = ConfigLoader.Load(Write("{}"), [new("objects[0].qom-type", "tls-creds-x509"), new("objects[0].id", "tls0"), new("objects[0].dir", "/certs"), new("migration.parameters.tls-creds", "tls0")]).Migration;

        Assert.AreEqual("/certs", migration.TlsObjects.Single().Dir);
        Assert.AreEqual("tls0", migration.TlsCreds);
    }

    [TestMethod]
    public void TheSettingsReadTheObjectsFiles_IntoTheRegistry()
    {
        TlsCredentialsWriter.Write(Path.Combine(Dir, "certs"), ["localhost"], TimeSpan.FromDays(1));
        string path = Write("""
            { "objects": [ { "qom-type": "tls-creds-x509", "id": "src", "dir": "certs" }, { "qom-type": "tls-creds-x509", "id": "dst", "dir": "certs", "endpoint": "server" } ],
              "migration": { "parameters": { "tls-creds": "src", "tls-hostname": "localhost" } } }
            """);

        var settings = new MigrationSettings(ConfigLoader.Load(path).Migration);

        CollectionAssert.AreEqual(new[] { "dst", "src" }, settings.TlsCredentials.Ids.ToArray());
        Assert.IsNotNull(settings.TlsCredentials.Resolve("dst", TlsEndpoint.Server).Certificate);
        Assert.AreEqual(Path.Combine(Dir, "certs"), settings.TlsCredentials.Resolve("src", TlsEndpoint.Client).Directory);
        Assert.AreEqual("src", settings.Snapshot().TlsCreds);
        Assert.AreEqual("localhost", settings.Snapshot().TlsHostname);
    }

    [TestMethod]
    public void AMissingFileFailsTheSettings_NamingTheObjectAndTheFile()
    {
        Directory.CreateDirectory(Path.Combine(Dir, "empty"));
        string path = Write("""{ "objects": [ { "qom-type": "tls-creds-x509", "id": "tls0", "dir": "empty", "endpoint": "server" } ] }""");
        MigrationConfig migration = ConfigLoader.Load(path).Migration;

        ConfigException ex = Assert.ThrowsExactly<ConfigException>(() => new MigrationSettings(migration));

        string ca = Path.Combine(Dir, "empty", "ca-cert.pem");
        Assert.AreEqual($"objects[0]: TLS credentials 'tls0': {ca} does not exist; a server endpoint needs ca-cert.pem, server-cert.pem and server-key.pem in its dir (QEMU's layout).", ex.Message);
    }
    [TestMethod]
    public void AuthzList_RulesInTheConfig_AreCheckedAtLoad_AndDecide()
    {
        string path = Write("""
            {
              "objects": [
                { "qom-type": "authz-list", "id": "auth0", "policy": "deny",
                  "rules": [ { "match": "CN=*.example", "policy": "allow", "format": "glob" } ] }
              ],
              "migration": { "parameters": { "tls-authz": "auth0" } }
            }
            """);

        MigrationConfig migration = ConfigLoader.Load(path).Migration;

        var settings = new MigrationSettings(migration);
        TlsAuthorization list = settings.TlsCredentials.ResolveAuthorization("auth0");
        Assert.IsTrue(list.IsAllowed("CN=src.example", out string why), why);
        Assert.IsFalse(list.IsAllowed("CN=src.other", out _));

        string bad = Write("""
            {
              "objects": [
                { "qom-type": "authz-list", "id": "auth0", "rules": [ { "match": "CN=x", "policy": "perhaps" } ] },
                { "qom-type": "authz-simple", "id": "auth1", "identity": "CN=y", "rules": [ { "match": "CN=x", "policy": "allow" } ] }
              ]
            }
            """);
        ConfigException ex = Assert.ThrowsExactly<ConfigException>(() => ConfigLoader.Load(bad));
        CollectionAssert.Contains(ex.Errors.ToList(), "objects[0]: authz-list 'auth0' has rules[0].policy 'perhaps' (expected allow or deny). Expected QEMU's format: {\"rules\": [{\"match\": \"CN=src.example\", \"policy\": \"allow\", \"format\": \"exact\"}], \"policy\": \"deny\"}.", string.Join("\n", ex.Errors));
        CollectionAssert.Contains(ex.Errors.ToList(), "objects[1].rules: only an authz-list object has a rule list.", string.Join("\n", ex.Errors));
    }

    [TestMethod]
    public void AuthorizationObjects_AreRead_AndTlsAuthzMustNameOne()
    {
        File.WriteAllText(Path.Combine(Dir, "sources.json"), """{ "rules": [ { "match": "CN=*.example", "policy": "allow", "format": "glob" } ] }""");
        string path = Write("""
            {
              "objects": [
                { "qom-type": "authz-simple", "id": "auth0", "identity": "CN=src.example,O=Example" },
                { "qom-type": "authz-listfile", "id": "auth1", "filename": "sources.json", "refresh": false }
              ],
              "migration": { "parameters": { "tls-authz": "auth1" } }
            }
            """);

        MigrationConfig migration = ConfigLoader.Load(path).Migration;

        Assert.AreEqual("auth1", migration.TlsAuthz);
        Assert.AreEqual(new AuthzObjectConfig("auth0", "authz-simple", "CN=src.example,O=Example", true, "objects[0]"), migration.AuthzObjects[0]);
        Assert.AreEqual(new AuthzObjectConfig("auth1", "authz-listfile", Path.Combine(Dir, "sources.json"), false, "objects[1]"), migration.AuthzObjects[1]);
        var settings = new MigrationSettings(migration);
        Assert.IsTrue(settings.TlsCredentials.ResolveAuthorization("auth1").IsAllowed("CN=src.example", out _), "the list file was read");
        Assert.AreEqual("auth1", settings.Snapshot().TlsAuthz);
    }

    [TestMethod]
    public void BadAuthorizationObjects_AreNamed()
    {
        ConfigException ex = Fails(Write("""
            {
              "objects": [
                { "qom-type": "authz-simple", "id": "auth0" },
                { "qom-type": "authz-listfile", "id": "auth1", "filename": "f.json", "refersh": true },
                { "qom-type": "tls-creds-x509", "id": "tls0", "dir": "certs" }
              ],
              "migration": { "parameters": { "tls-authz": "tls0" } }
            }
            """));

        CollectionAssert.Contains(ex.Errors.ToList(), "objects[0].identity: missing; give the source certificate's subject as QEMU writes it, e.g. \"CN=src.example,O=Example,C=GB\".");
        CollectionAssert.Contains(ex.Errors.ToList(), "objects[1].refersh: unknown key 'refersh' in a authz-listfile object; did you mean 'refresh'?");
        Assert.IsTrue(ex.Errors.Any(e => e.StartsWith("migration.parameters.tls-authz: 'tls0' is not the id of an authorization object", StringComparison.Ordinal)), string.Join("\n", ex.Errors));
    }

    [TestMethod]
    public void AMissingRulesFile_StopsTheMachineAtStart_NamingTheObject()
    {
        MigrationConfig migration = ConfigLoader.Load(Write("""{ "objects": [ { "qom-type": "authz-listfile", "id": "auth0", "filename": "missing.json" } ] }""")).Migration;

        ConfigException ex = Assert.ThrowsExactly<ConfigException>(() => new MigrationSettings(migration));
        StringAssert.StartsWith(ex.Message, "objects[0]: authz-listfile 'auth0': " + Path.Combine(Dir, "missing.json") + " cannot be read");
    }
}
