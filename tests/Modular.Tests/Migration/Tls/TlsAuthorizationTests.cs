using System.Security.Cryptography.X509Certificates;
using Modular.Abstractions.Transports;
using Modular.Core.Migration.Tls;
using Modular.Tests.Support;

namespace Modular.Tests.Migration.Tls;

/// <summary>tls-authz: QEMU's authz-simple and authz-listfile objects, the subject text they compare, and the destination's refusal.</summary>
[TestClass]
public sealed class TlsAuthorizationTests
{
    private string _dir = "";

    [TestInitialize]
    public void Setup() => _dir = TestPluginCompiler.TempDirectory("tls-authz");

    [TestCleanup]
    public void Cleanup() => Directory.Delete(_dir, recursive: true);

    [TestMethod]
    public void Identity_IsRfc4514_MostSpecificFirst_AsQemuWritesIt()
    {
        // The builder encodes the last added first, so these come out as CAs issue them, most
        // general first in DER (openssl's -subj /C=GB/ST=London/L=London/O=Example Org/CN=src.example,
        // which openssl -nameopt RFC2253 prints as expected here).
        var typical = new X500DistinguishedNameBuilder();
        typical.AddCommonName("src.example");
        typical.AddOrganizationName("Example Org");
        typical.AddLocalityName("London");
        typical.AddStateOrProvinceName("London");
        typical.AddCountryOrRegion("GB");
        Assert.AreEqual("CN=src.example,O=Example Org,L=London,ST=London,C=GB", TlsAuthorization.Identity(typical.Build()));

        var escaped = new X500DistinguishedNameBuilder();
        escaped.AddCommonName("a, b");
        escaped.AddOrganizationalUnitName("x+y");
        Assert.AreEqual("CN=a\\, b,OU=x\\+y", TlsAuthorization.Identity(escaped.Build()));

        var domain = new X500DistinguishedNameBuilder();
        domain.AddCommonName("host");
        domain.AddDomainComponent("example");
        domain.AddDomainComponent("com");
        Assert.AreEqual("CN=host,DC=example,DC=com", TlsAuthorization.Identity(domain.Build()));

        var other = new X500DistinguishedNameBuilder();
        other.AddEmailAddress("ops@example.com");
        StringAssert.StartsWith(TlsAuthorization.Identity(other.Build()), "1.2.840.113549.1.9.1=#", "an attribute without a short name is its OID and the DER in hex");
    }

    [TestMethod]
    [DataRow("CN=*.example,*", "CN=src.example,O=Example", true)]
    [DataRow("CN=*.example,*", "CN=src.example.org,O=Example", false)]
    [DataRow("CN=src?,O=X", "CN=src1,O=X", true)]
    [DataRow("CN=src[0-9],O=X", "CN=src7,O=X", true)]
    [DataRow("CN=src[!0-9],O=X", "CN=src7,O=X", false)]
    [DataRow("CN=exact", "CN=exact", true)]
    [DataRow("CN=exact", "CN=exact2", false)]
    [DataRow("*", "", true)]
    [DataRow("CN=\\*", "CN=*", true)]
    [DataRow("CN=\\*", "CN=x", false)]
    public void Glob_IsFnmatch(string pattern, string text, bool matches) =>
        Assert.AreEqual(matches, TlsAuthorization.GlobMatches(pattern, text));

    [TestMethod]
    public void ListFile_FirstMatchingRuleDecides_ElseThePolicy_AndRefreshRereads()
    {
        string rules = Path.Combine(_dir, "rules.json");
        File.WriteAllText(rules, """
            { "rules": [
                { "match": "CN=bad.example", "policy": "deny" },
                { "match": "CN=*.example", "policy": "allow", "format": "glob" } ],
              "policy": "deny" }
            """);
        ListFileAuthorization list = ListFileAuthorization.Load("auth0", rules);
        Assert.IsFalse(list.IsAllowed("CN=bad.example", out string why));
        StringAssert.Contains(why, "rule 0");
        Assert.IsTrue(list.IsAllowed("CN=good.example", out why));
        StringAssert.Contains(why, "rule 1");
        Assert.IsFalse(list.IsAllowed("CN=other.org", out why));
        StringAssert.Contains(why, "its policy is deny");

        File.WriteAllText(rules, """{ "policy": "allow" }""");
        Assert.IsTrue(list.IsAllowed("CN=other.org", out _), "refresh (the default) reads the edited file");
        File.WriteAllText(rules, "{ not json");
        Assert.IsFalse(list.IsAllowed("CN=other.org", out why), "a broken file refuses");
        StringAssert.Contains(why, "is not valid JSON");

        File.WriteAllText(rules, """{ "policy": "allow" }""");
        ListFileAuthorization fixedList = ListFileAuthorization.Load("auth1", rules, refresh: false);
        File.WriteAllText(rules, """{ "policy": "deny" }""");
        Assert.IsTrue(fixedList.IsAllowed("CN=x", out _), "without refresh the list read at object-add stays");
    }

    [TestMethod]
    public async Task Destination_RefusesASourceTheAuthorizationDoesNotName_AndAcceptsOneItDoes()
    {
        (TlsCredentialsRegistry registry, _) = TlsConnectionTests.Pki(_dir);
        // The writer's client certificate is CN=Modular migration source.
        registry.Add(new SimpleAuthorization("only-src2", "CN=src2.example"));
        registry.Add(new SimpleAuthorization("ours", "CN=Modular migration source"));
        TransportEndpoint listen = TransportEndpoint.Parse("tcp:127.0.0.1:0");
        TlsSession client = TlsSession.For(registry, "tls-client", "", TransportEndpoint.Parse("tcp:127.0.0.1:1"), outgoing: true)!;

        TlsSession refusing = TlsSession.For(registry, "tls-server", "", listen, outgoing: false, tlsAuthz: "only-src2")!;
        Exception error = await Assert.ThrowsAsync<Exception>(() => TlsConnectionTests.HandshakeOverTcpAsync(client, refusing));
        StringAssert.Contains(error.ToString(), "TLS x509 authz check for CN=Modular migration source is denied (authz-simple 'only-src2' allows only 'CN=src2.example')");

        TlsSession accepting = TlsSession.For(registry, "tls-server", "", listen, outgoing: false, tlsAuthz: "ours")!;
        await TlsConnectionTests.HandshakeOverTcpAsync(client, accepting);

        StringAssert.StartsWith(Assert.ThrowsExactly<ArgumentException>(() => TlsSession.For(registry, "tls-server", "", listen, outgoing: false, tlsAuthz: "missing")).Message, "Authorization object 'missing' not found");
    }
}
