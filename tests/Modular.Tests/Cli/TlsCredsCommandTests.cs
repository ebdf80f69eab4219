using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography.X509Certificates;
using System.Text.Json.Nodes;
using Modular.Core.Migration.Tls;
using Modular.Tests.Support;

namespace Modular.Tests.Cli;

/// <summary>
/// <c>modular tls-creds</c> through the real executable (QEMU's five files, keys private, never
/// overwriting, loadable for both endpoints), and <c>modular migrate --tls-creds --tls-hostname</c>
/// setting the parameters on the source.
/// </summary>
[TestClass]
public sealed class TlsCredsCommandTests
{
    private string _dir = string.Empty;

    [TestInitialize]
    public void CreateDirectory() => _dir = TestPluginCompiler.TempDirectory("tls-creds-cli");

    [TestCleanup]
    public void DeleteDirectory() => Directory.Delete(_dir, recursive: true);

    [TestMethod]
    public void WritesQemusFiveFiles_KeysPrivate_AndSaysHowToUseThem()
    {
        string certs = Path.Combine(_dir, "certs");

        CliProcess.Result result = CliProcess.Run("tls-creds", "--dir", certs);

        Assert.AreEqual(0, result.ExitCode, result.StdErr);
        string[] names = ["ca-cert.pem", "server-cert.pem", "server-key.pem", "client-cert.pem", "client-key.pem"];
        CollectionAssert.AreEquivalent(names, Directory.GetFiles(certs).Select(Path.GetFileName).ToArray());
        foreach (string name in names)
        {
            StringAssert.Contains(result.StdOut, Path.Combine(certs, name));
        }

        if (!OperatingSystem.IsWindows())
        {
            Assert.AreEqual(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(Path.Combine(certs, "server-key.pem")));
            Assert.AreEqual(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(Path.Combine(certs, "client-key.pem")));
        }

        StringAssert.Contains(result.StdOut, $$"""{ "qom-type": "tls-creds-x509", "id": "tls0", "dir": "{{certs}}", "endpoint": "server" }""");
        StringAssert.Contains(result.StdOut, $$"""{ "qom-type": "tls-creds-x509", "id": "tls0", "dir": "{{certs}}", "endpoint": "client" }""");
        StringAssert.Contains(result.StdOut, "The server certificate is for localhost, 127.0.0.1, ::1 and valid for 365 days.");
    }

    [TestMethod]
    public void TheCredentialsLoadForBothEndpoints_WithTheGivenHostnames()
    {
        string certs = Path.Combine(_dir, "certs");

        CliProcess.Result result = CliProcess.Run("tls-creds", "--dir", certs, "--hostname", "dest.example", "--hostname", "10.0.0.7");

        Assert.AreEqual(0, result.ExitCode, result.StdErr);
        TlsCredentials server = TlsCredentials.Load("tls0", certs, TlsEndpoint.Server);
        TlsCredentials client = TlsCredentials.Load("tls0", certs, TlsEndpoint.Client);
        Assert.IsTrue(server.Certificate!.HasPrivateKey);
        Assert.IsTrue(client.Certificate!.HasPrivateKey);
        Assert.IsNull(server.CheckChain(client.Certificate), "the client's certificate chains to the CA");
        Assert.IsNull(client.CheckChain(server.Certificate), "and the server's");
        Assert.IsTrue(server.Certificate.MatchesHostname("dest.example"));
        Assert.IsTrue(server.Certificate.MatchesHostname("10.0.0.7"));
        Assert.IsFalse(server.Certificate.MatchesHostname("localhost"), "only the names given");
        Assert.IsGreaterThan(DateTime.Now.AddDays(364), server.Certificate.NotAfter);
    }

    [TestMethod]
    public void ADirectoryWithCredentialsIsRefused_AndNothingIsOverwritten()
    {
        string certs = Path.Combine(_dir, "certs");
        Assert.AreEqual(0, CliProcess.Run("tls-creds", "--dir", certs).ExitCode);
        byte[] ca = File.ReadAllBytes(Path.Combine(certs, "ca-cert.pem"));

        CliProcess.Result again = CliProcess.Run("tls-creds", "--dir", certs);

        Assert.AreEqual(1, again.ExitCode, again.StdOut);
        Assert.AreEqual($"modular tls-creds: {Path.Combine(certs, "ca-cert.pem")} already exists; choose an empty directory (nothing was written).", again.StdErr.Trim());
        CollectionAssert.AreEqual(ca, File.ReadAllBytes(Path.Combine(certs, "ca-cert.pem")));
    }

    [TestMethod]
    public void WithoutDirItIsAUsageError()
    {
        CliProcess.Result result = CliProcess.Run("tls-creds");

        Assert.AreEqual(2, result.ExitCode);
        StringAssert.Contains(result.StdErr, "--dir");
    }

    [TestMethod]
    [Timeout(120_000, CooperativeCancellation = true)]
    public async Task MigrateSetsTlsCredsTlsHostnameAndPostcopyBandwidth_OnTheSource()
    {
        await using ModularProcess source = await ModularProcess.StartAsync("source", _dir, "ab-guest.elf", 32UL << 20, "--set", "machine.accelerator=synthetic");
        int port;
        using (var probe = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp))
        {
            probe.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            port = ((IPEndPoint)probe.LocalEndPoint!).Port;
        }

        // Nobody listens there: the migration fails, but only after the parameters were set.
        CliProcess.Result result = await Task.Run(() => CliProcess.Run("migrate", "--qmp", source.QmpSocket, "--tls-creds", "tls0", "--tls-hostname", "dest.example", "--max-postcopy-bandwidth", "8M", $"tcp:127.0.0.1:{port}"));

        Assert.AreEqual(1, result.ExitCode, result.StdOut + result.StdErr);
        var parameters = (JsonObject)(await source.Qmp.ExecuteAsync("query-migrate-parameters"))!;
        Assert.AreEqual("tls0", parameters["tls-creds"]!.GetValue<string>());
        Assert.AreEqual("dest.example", parameters["tls-hostname"]!.GetValue<string>());
        Assert.AreEqual(8UL << 20, parameters["max-postcopy-bandwidth"]!.GetValue<ulong>());
    }

    [TestMethod]
    public void MigrateRefusesAPostcopyBandwidthThatIsNotASize()
    {
        CliProcess.Result result = CliProcess.Run("migrate", "--qmp", "/nonexistent.sock", "--max-postcopy-bandwidth", "fast", "unix:/tmp/x.sock");
        Assert.AreEqual(2, result.ExitCode, result.StdErr);
        StringAssert.Contains(result.StdErr, "--max-postcopy-bandwidth 'fast': expected bytes per second such as 100M or 1G, or 0 for unlimited.");
    }
}
