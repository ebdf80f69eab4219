using Modular.Core.Migration.Engine;
using Modular.Core.Migration.State;
using Modular.Core.Migration.Tls;
using Modular.Core.Qmp;
using Modular.Tests.Support;

namespace Modular.Tests.Migration.Tls;

/// <summary>Whole migrations in TLS in one process (synthetic accelerator, real tcp and unix transports).</summary>
[TestClass]
public sealed class TlsMigrationTests
{
    private string _dir = "";
    private string _pki = "";

    [TestInitialize]
    public void Setup()
    {
        _dir = TestPluginCompiler.TempDirectory("tls-migration");
        _pki = Path.Combine(_dir, "pki");
        TlsCredentialsWriter.Write(_pki, ["localhost", "127.0.0.1"], TimeSpan.FromDays(1));
    }

    [TestCleanup]
    public void Cleanup() => Directory.Delete(_dir, recursive: true);

    private void ClientSide(MigrationController controller, string hostname = "")
    {
        controller.Settings.TlsCredentials.Add(TlsCredentials.Load("tls0", _pki, TlsEndpoint.Client));
        controller.Settings.SetParameters(null, null, tlsCreds: "tls0", tlsHostname: hostname);
    }

    private void ServerSide(MigrationController controller)
    {
        controller.Settings.TlsCredentials.Add(TlsCredentials.Load("tls0", _pki, TlsEndpoint.Server));
        controller.Settings.SetParameters(null, null, tlsCreds: "tls0");
    }

    [TestMethod]
    [DataRow("tcp", new string[0])]
    [DataRow("unix", new string[0])]
    [DataRow("tcp", new[] { "multifd" })]
    [DataRow("unix", new[] { "multifd" })]
    public async Task Precopy_InTls_DeliversTheRamIntact(string scheme, string[] capabilities)
    {
        string listen = scheme == "tcp" ? "tcp:127.0.0.1:0" : "unix:" + Path.Combine(_dir, "mig.sock");
        await using InProcessMigrationPair pair = await InProcessMigrationPair.StartAsync(
            InProcessMigrationPair.SyntheticConfig(_dir, 3000, paused: false, capabilities), InProcessMigrationPair.SyntheticConfig(_dir, 0, paused: true, capabilities),
            configureSource: c => ClientSide(c, hostname: scheme == "unix" ? "localhost" : ""), configureDestination: ServerSide, listenUri: listen);
        await pair.Outgoing.Completion.WaitAsync(TimeSpan.FromSeconds(120));
        await pair.Incoming.Completion.WaitAsync(TimeSpan.FromSeconds(30));

        Assert.AreEqual(MigrationStatus.Completed, pair.Outgoing.Status.Current, pair.Outgoing.Error);
        Assert.AreEqual(MigrationStatus.Completed, pair.Incoming.Status.Current, pair.Incoming.Error);
        Assert.IsNotNull(pair.Outgoing.Tls);
        Assert.IsNotNull(pair.Incoming.Tls);
        InProcessMigrationPair.AssertSameRam(pair.Source, pair.Destination);
    }

    [TestMethod]
    public async Task Postcopy_WithPreempt_InTls_Completes_AndTheGuestRunsOnTheDestination()
    {
        string[] capabilities = ["postcopy-ram", "postcopy-preempt"];
        await using InProcessMigrationPair pair = await InProcessMigrationPair.StartAsync(
            InProcessMigrationPair.Config(_dir, capabilities), InProcessMigrationPair.Config(_dir, capabilities), startPostcopy: true,
            configureSource: c =>
            {
                ClientSide(c);
                c.Settings.SetParameters(null, null, maxPostcopyBandwidth: 16_000_000);
            },
            configureDestination: ServerSide);
        await pair.WaitForStatusAsync(MigrationStatus.PostcopyActive);
        await pair.Outgoing.Completion.WaitAsync(TimeSpan.FromSeconds(60));
        await pair.Incoming.Completion.WaitAsync(TimeSpan.FromSeconds(30));

        Assert.AreEqual(MigrationStatus.Completed, pair.Outgoing.Status.Current, pair.Outgoing.Error);
        Assert.AreEqual(QmpRunState.Running, pair.Destination.RunState);
        long requests = pair.SourceMigration.Query()["ram"]!["postcopy-requests"]!.GetValue<long>();
        Assert.IsGreaterThan(0L, requests, "the running destination asked for pages, over the preempt channel in TLS");
    }

    [TestMethod]
    public async Task SourceGoneMidMigration_TheDestinationSaysWhichConnection_NotSeeInnerException()
    {
        await using InProcessMigrationPair pair = await InProcessMigrationPair.StartAsync(
            InProcessMigrationPair.SyntheticConfig(_dir, 3000, paused: false), InProcessMigrationPair.SyntheticConfig(_dir, 0, paused: true),
            configureSource: c =>
            {
                ClientSide(c);
                c.Settings.SetParameters(null, 4_000_000);
            },
            configureDestination: ServerSide);
        await pair.WaitForStatusAsync(MigrationStatus.Active);
        await Task.Delay(300);
        pair.Outgoing.Cancel();
        await Assert.ThrowsAsync<Exception>(() => pair.Incoming.Completion.WaitAsync(TimeSpan.FromSeconds(30)));

        Assert.AreEqual(MigrationStatus.Failed, pair.Incoming.Status.Current);
        StringAssert.StartsWith(pair.Incoming.Error, "Incoming migration failed: ");
        Assert.IsFalse(pair.Incoming.Error!.Contains("see inner exception", StringComparison.Ordinal), pair.Incoming.Error);
        Assert.IsFalse(pair.Incoming.Error.Contains("IOException", StringComparison.Ordinal), pair.Incoming.Error);
        // A reset names the connection (the transport's own error); a clean close says where the stream ended.
        Assert.IsTrue(pair.Incoming.Error.Contains("the migration connection tcp:127.0.0.1:", StringComparison.Ordinal) || pair.Incoming.Error.Contains("the stream ended", StringComparison.Ordinal), pair.Incoming.Error);
        Console.WriteLine(pair.Incoming.Error);
    }

    [TestMethod]
    public async Task DestinationWithoutTls_FailsTheSource_WhichKeepsRunning()
    {
        await using InProcessMigrationPair pair = await InProcessMigrationPair.StartAsync(
            InProcessMigrationPair.Config(_dir), InProcessMigrationPair.Config(_dir), configureSource: c => ClientSide(c));
        await pair.Outgoing.Completion.WaitAsync(TimeSpan.FromSeconds(60));

        Assert.AreEqual(MigrationStatus.Failed, pair.Outgoing.Status.Current);
        StringAssert.Contains(pair.Outgoing.Error, "TLS handshake with");
        StringAssert.Contains(pair.Outgoing.Error, "Check that the destination has tls-creds set");
        Assert.AreEqual(QmpRunState.Running, pair.Source.RunState);
    }

    [TestMethod]
    public async Task SourceWithoutTls_FailsTheDestination_NamingTheHandshake()
    {
        // With the return path, the source hears of the destination's failure even when the whole
        // (small) stream fitted in the socket's buffers before the destination gave up.
        await using InProcessMigrationPair pair = await InProcessMigrationPair.StartAsync(
            InProcessMigrationPair.Config(_dir, "return-path"), InProcessMigrationPair.Config(_dir, "return-path"), configureDestination: ServerSide);
        await Assert.ThrowsAsync<Exception>(() => pair.Incoming.Completion.WaitAsync(TimeSpan.FromSeconds(60)));
        await pair.Outgoing.Completion.WaitAsync(TimeSpan.FromSeconds(60));

        Assert.AreEqual(MigrationStatus.Failed, pair.Incoming.Status.Current);
        StringAssert.Contains(pair.Incoming.Error, "TLS handshake with");
        StringAssert.Contains(pair.Incoming.Error, "Check that the source has tls-creds set");
        Assert.AreEqual(MigrationStatus.Failed, pair.Outgoing.Status.Current);
        Assert.AreEqual(QmpRunState.Running, pair.Source.RunState);
    }

    [TestMethod]
    public async Task Migrate_WithUnknownOrWrongCredentials_IsRefusedAtOnce()
    {
        // The pair's own migration fails at its handshake (a TLS source, a plain destination).
        await using InProcessMigrationPair pair = await InProcessMigrationPair.StartAsync(
            InProcessMigrationPair.Config(_dir), InProcessMigrationPair.Config(_dir), configureSource: c => ClientSide(c));
        await pair.Outgoing.Completion.WaitAsync(TimeSpan.FromSeconds(60)).ContinueWith(_ => { });
        Assert.AreEqual(MigrationStatus.Failed, pair.Outgoing.Status.Current);
        MigrationController source = pair.SourceMigration;
        string uri = pair.Incoming.BoundEndpoint!.ToString();

        source.Settings.SetParameters(null, null, tlsCreds: "missing");
        StringAssert.StartsWith(Assert.ThrowsExactly<QmpException>(() => source.StartOutgoing(uri)).Message, "No TLS credentials with id 'missing'");

        source.Settings.TlsCredentials.Add(TlsCredentials.Load("server-creds", _pki, TlsEndpoint.Server));
        source.Settings.SetParameters(null, null, tlsCreds: "server-creds");
        StringAssert.StartsWith(Assert.ThrowsExactly<QmpException>(() => source.StartOutgoing(uri)).Message, "Expecting TLS credentials with a client endpoint");

        source.Settings.SetParameters(null, null, tlsCreds: "tls0");
        StringAssert.Contains(Assert.ThrowsExactly<QmpException>(() => source.StartOutgoing("file:" + Path.Combine(_dir, "snap"))).Message, "TLS cannot run over file:");
        Assert.IsFalse(File.Exists(Path.Combine(_dir, "snap")), "nothing was written");
        Assert.AreEqual(QmpRunState.Running, pair.Source.RunState);
    }
}
