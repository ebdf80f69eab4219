using System.Buffers;
using System.IO.Pipelines;
using System.Runtime.InteropServices;
using Modular.Abstractions.Transports;
using Modular.Core.Migration.Tls;
using Modular.Core.Plugins;
using Modular.Tests.Support;

namespace Modular.Tests.Migration.Tls;

/// <summary>
/// Migration TLS on the real tcp and unix transport plugins: the handshake on the main connection
/// and on extra and raw channels, the bytes both ways, and each way a handshake is refused.
/// </summary>
[TestClass]
public sealed class TlsConnectionTests
{
    private static PluginCatalog? s_catalog;
    private string _dir = "";

    [ClassInitialize]
    public static void LoadPlugins(TestContext _) => s_catalog = PluginCatalog.Load([PluginCatalog.DefaultDirectory]);

    private static PluginCatalog Catalog => s_catalog ??= PluginCatalog.Load([PluginCatalog.DefaultDirectory]);

    [ClassCleanup]
    public static void UnloadPlugins()
    {
        s_catalog?.Dispose();
        s_catalog = null;
    }

    [TestInitialize]
    public void Setup() => _dir = TestPluginCompiler.TempDirectory("tls");

    [TestCleanup]
    public void Cleanup() => Directory.Delete(_dir, recursive: true);

    /// <summary>A client and a server session from one written PKI (server names localhost and 127.0.0.1).</summary>
    internal static (TlsCredentialsRegistry Registry, string Pki) Pki(string dir, string name = "pki", string caName = "Modular migration CA", params string[] serverNames)
    {
        string pki = Path.Combine(dir, name);
        TlsCredentialsWriter.Write(pki, serverNames.Length > 0 ? serverNames : ["localhost", "127.0.0.1"], TimeSpan.FromDays(1), caName);
        var registry = new TlsCredentialsRegistry();
        registry.Add(TlsCredentials.Load("tls-client", pki, TlsEndpoint.Client));
        registry.Add(TlsCredentials.Load("tls-server", pki, TlsEndpoint.Server));
        return (registry, pki);
    }

    private sealed class Pair(IMigrationListener listener, IMigrationConnection client, IMigrationConnection server) : IAsyncDisposable
    {
        public IMigrationConnection Client => client;

        public IMigrationConnection Server => server;

        public async ValueTask DisposeAsync()
        {
            await client.DisposeAsync();
            await server.DisposeAsync();
            await listener.DisposeAsync();
        }
    }

    /// <summary>Connects over <paramref name="scheme"/> and wraps both ends; a failing side's exception surfaces.</summary>
    private async Task<Pair> ConnectAsync(string scheme, TlsSession client, TlsSession server)
    {
        IMigrationTransport transport = Catalog.GetTransport(scheme);
        string address = scheme == "tcp" ? "127.0.0.1:0" : Path.Combine(_dir, "s.sock");
        IMigrationListener listener = await transport.ListenAsync(new TransportEndpoint(scheme, address));
        Task<IMigrationConnection> accepted = listener.AcceptAsync().AsTask();
        IMigrationConnection plainClient = await transport.ConnectAsync(listener.Endpoint);
        IMigrationConnection plainServer = await accepted;
        Task<IMigrationConnection> serverSide = server.WrapAsync(plainServer, CancellationToken.None).AsTask();
        Task<IMigrationConnection> clientSide = client.WrapAsync(plainClient, CancellationToken.None).AsTask();
        try
        {
            await Task.WhenAll(serverSide, clientSide).WaitAsync(TimeSpan.FromSeconds(30));
        }
        catch
        {
            await listener.DisposeAsync();
            foreach (Task<IMigrationConnection> side in new[] { serverSide, clientSide }.Where(t => t.IsCompletedSuccessfully))
            {
                await side.Result.DisposeAsync();
            }

            throw;
        }

        return new Pair(listener, clientSide.Result, serverSide.Result);
    }

    /// <summary>Connects over tcp with the two sessions and sends a few bytes through; the handshake's failure surfaces.</summary>
    internal static async Task HandshakeOverTcpAsync(TlsSession client, TlsSession server)
    {
        string dir = TestPluginCompiler.TempDirectory("tls-pair");
        try
        {
            await using Pair pair = await new TlsConnectionTests { _dir = dir }.ConnectAsync("tcp", client, server);
            await pair.Client.Transport.Output.WriteAsync("ok"u8.ToArray());
            Assert.AreEqual("ok", System.Text.Encoding.ASCII.GetString(await ReadExactlyAsync(pair.Server.Transport.Input, 2).WaitAsync(TimeSpan.FromSeconds(30))));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private static TlsSession Client(TlsCredentialsRegistry registry, string uri, string hostname = "") =>
        TlsSession.For(registry, "tls-client", hostname, TransportEndpoint.Parse(uri), outgoing: true)!;

    private static TlsSession Server(TlsCredentialsRegistry registry) =>
        TlsSession.For(registry, "tls-server", "", TransportEndpoint.Parse("tcp:0.0.0.0:0"), outgoing: false)!;

    private static async Task<byte[]> ReadExactlyAsync(PipeReader reader, int count)
    {
        while (true)
        {
            ReadResult result = await reader.ReadAsync();
            if (result.Buffer.Length >= count || result.IsCompleted)
            {
                byte[] bytes = result.Buffer.Slice(0, Math.Min(count, result.Buffer.Length)).ToArray();
                reader.AdvanceTo(result.Buffer.GetPosition(bytes.Length));
                return bytes;
            }

            reader.AdvanceTo(result.Buffer.Start, result.Buffer.End);
        }
    }

    [TestMethod]
    [DataRow("tcp")]
    [DataRow("unix")]
    public async Task MainConnection_CarriesTheStreamAndTheReturnPath_AndEndsWhenTheSourceCompletes(string scheme)
    {
        (TlsCredentialsRegistry registry, _) = Pki(_dir);
        await using Pair pair = await ConnectAsync(scheme, Client(registry, "tcp:127.0.0.1:1", hostname: scheme == "unix" ? "localhost" : ""), Server(registry));
        StringAssert.EndsWith(pair.Client.RemoteDescription, "(TLS)");

        byte[] forward = new byte[3 << 20];
        Random.Shared.NextBytes(forward);
        Task<byte[]> received = ReadExactlyAsync(pair.Server.Transport.Input, forward.Length + 1);
        await pair.Client.Transport.Output.WriteAsync(forward);
        await pair.Client.Transport.Output.CompleteAsync();
        byte[] got = await received.WaitAsync(TimeSpan.FromSeconds(30));
        CollectionAssert.AreEqual(forward, got, "every byte arrives, and then the end (no extra byte)");

        await pair.Server.Transport.Output.WriteAsync("return path"u8.ToArray());
        byte[] back = await ReadExactlyAsync(pair.Client.Transport.Input, 11).WaitAsync(TimeSpan.FromSeconds(30));
        Assert.AreEqual("return path", System.Text.Encoding.ASCII.GetString(back));
    }

    [TestMethod]
    [DataRow("tcp")]
    [DataRow("unix")]
    public async Task ExtraAndRawChannels_HandshakeOnTheirOwn_AndCarryBytes(string scheme)
    {
        (TlsCredentialsRegistry registry, _) = Pki(_dir);
        await using Pair pair = await ConnectAsync(scheme, Client(registry, "tcp:localhost:1", hostname: scheme == "unix" ? "localhost" : ""), Server(registry));

        // Channel 1: a pipe (postcopy preempt).
        Task<IDuplexPipe> acceptedPipe = ((IExtraChannels)pair.Server).OpenChannelAsync(1).AsTask();
        IDuplexPipe sourcePipe = await ((IExtraChannels)pair.Client).OpenChannelAsync(1);
        IDuplexPipe destinationPipe = await acceptedPipe.WaitAsync(TimeSpan.FromSeconds(30));
        await sourcePipe.Output.WriteAsync("preempt page"u8.ToArray());
        Assert.AreEqual("preempt page", System.Text.Encoding.ASCII.GetString(await ReadExactlyAsync(destinationPipe.Input, 12).WaitAsync(TimeSpan.FromSeconds(30))));

        // Channel 2: raw (multifd): a gather of native segments arrives scattered into others.
        Task<IRawChannel> acceptedRaw = ((IRawChannels)pair.Server).OpenRawChannelAsync(2).AsTask();
        using IRawChannel sender = await ((IRawChannels)pair.Client).OpenRawChannelAsync(2);
        using IRawChannel receiver = await acceptedRaw.WaitAsync(TimeSpan.FromSeconds(30));
        StringAssert.Contains(receiver.Description, "channel 2");
        const int pages = 300;
        byte[] sent = new byte[pages * 4096];
        Random.Shared.NextBytes(sent);
        nint source = Marshal.AllocHGlobal(sent.Length);
        nint target = Marshal.AllocHGlobal(sent.Length);
        try
        {
            Marshal.Copy(sent, 0, source, sent.Length);
            RawSegment[] gather = [.. Enumerable.Range(0, pages).Select(i => new RawSegment(source + (i * 4096), 4096))];
            RawSegment[] scatter = [new(target, 100), new(target + 100, sent.Length - 100)];
            Task<bool> receive = Task.Run(() => receiver.Receive(scatter));
            await Task.Run(() => sender.Send(gather));
            Assert.IsTrue(await receive.WaitAsync(TimeSpan.FromSeconds(30)));
            byte[] arrived = new byte[sent.Length];
            Marshal.Copy(target, arrived, 0, arrived.Length);
            Assert.IsTrue(sent.AsSpan().SequenceEqual(arrived), "the pages arrive in order and intact");

            sender.CompleteSend();
            Assert.IsFalse(await Task.Run(() => receiver.Receive([new RawSegment(target, 8)])).WaitAsync(TimeSpan.FromSeconds(30)), "a clean end reads as false");
        }
        finally
        {
            Marshal.FreeHGlobal(source);
            Marshal.FreeHGlobal(target);
        }
    }

    [TestMethod]
    public async Task OverATransportWithoutExtraChannels_TheTlsConnectionOffersNone_SoTheEngineFallsBack()
    {
        (TlsCredentialsRegistry registry, _) = Pki(_dir);
        var transport = new InProcessTransport(offerPageChannel: false);
        await using IMigrationListener listener = await transport.ListenAsync(new TransportEndpoint(InProcessTransport.Scheme, "tls"));
        Task<IMigrationConnection> accepted = listener.AcceptAsync().AsTask();
        IMigrationConnection plainClient = await transport.ConnectAsync(listener.Endpoint);
        Assert.IsNotInstanceOfType<IExtraChannels>(plainClient);
        Task<IMigrationConnection> serverSide = Server(registry).WrapAsync(await accepted, CancellationToken.None).AsTask();
        await using IMigrationConnection client = await TlsSession.For(registry, "tls-client", "localhost", listener.Endpoint, outgoing: true)!.WrapAsync(plainClient, CancellationToken.None);
        await using IMigrationConnection server = await serverSide.WaitAsync(TimeSpan.FromSeconds(30));

        Assert.IsNotInstanceOfType<IExtraChannels>(client, "postcopy-preempt then shares the main connection, as in the clear");
        Assert.IsNotInstanceOfType<IRawChannels>(client, "multifd then says the transport has no raw channels, as in the clear");
        await client.Transport.Output.WriteAsync("ok"u8.ToArray());
        Assert.AreEqual("ok", System.Text.Encoding.ASCII.GetString(await ReadExactlyAsync(server.Transport.Input, 2).WaitAsync(TimeSpan.FromSeconds(30))));
    }

    [TestMethod]
    public async Task RawChannel_Abort_FailsABlockedReceive()
    {
        (TlsCredentialsRegistry registry, _) = Pki(_dir);
        await using Pair pair = await ConnectAsync("tcp", Client(registry, "tcp:127.0.0.1:1"), Server(registry));
        Task<IRawChannel> acceptedRaw = ((IRawChannels)pair.Server).OpenRawChannelAsync(1).AsTask();
        using IRawChannel sender = await ((IRawChannels)pair.Client).OpenRawChannelAsync(1);
        using IRawChannel receiver = await acceptedRaw.WaitAsync(TimeSpan.FromSeconds(30));
        byte[] buffer = new byte[4096];
        GCHandle pin = GCHandle.Alloc(buffer, GCHandleType.Pinned);
        try
        {
            Task<bool> blocked = Task.Run(() => receiver.Receive([new RawSegment(pin.AddrOfPinnedObject(), buffer.Length)]));
            await Task.Delay(200);
            Assert.IsFalse(blocked.IsCompleted, "nothing was sent");
            receiver.Abort();
            var error = await Assert.ThrowsExactlyAsync<IOException>(() => blocked.WaitAsync(TimeSpan.FromSeconds(10)));
            StringAssert.Contains(error.Message, "aborted");
            StringAssert.Contains(error.Message, "channel 1");
        }
        finally
        {
            pin.Free();
        }
    }

    [TestMethod]
    public async Task ServerCertificateFromAnotherCa_IsRefusedByTheSource_NamingTheCaFile()
    {
        (TlsCredentialsRegistry ours, _) = Pki(_dir, "ours", "Our CA");
        (_, string theirPki) = Pki(_dir, "theirs", "Their CA");
        var theirs = new TlsCredentialsRegistry();
        // A destination that does not check its peer: only the source can refuse.
        theirs.Add(TlsCredentials.Load("tls-server", theirPki, TlsEndpoint.Server, verifyPeer: false));
        var error = await Assert.ThrowsExactlyAsync<TransportException>(() => ConnectAsync("tcp", Client(ours, "tcp:127.0.0.1:1"), Server(theirs)));
        StringAssert.Contains(error.Message, "as client");
        StringAssert.Contains(error.Message, "TLS handshake with");
        StringAssert.Contains(error.Message, "does not chain to a CA in");
        StringAssert.Contains(error.Message, Path.Combine(_dir, "ours", "ca-cert.pem"));
    }

    [TestMethod]
    public async Task ExpiredServerCertificate_IsRefused_SayingItExpired()
    {
        // Valid from five minutes ago to one minute ago.
        string pki = Path.Combine(_dir, "expired");
        TlsCredentialsWriter.Write(pki, ["127.0.0.1"], TimeSpan.FromMinutes(-1));
        var registry = new TlsCredentialsRegistry();
        // QEMU's sanity check refuses it when the files are read, naming the file.
        var refused = Assert.ThrowsExactly<ArgumentException>(() => TlsCredentials.Load("tls-server", pki, TlsEndpoint.Server));
        StringAssert.StartsWith(refused.Message, $"TLS credentials 'tls-server': The certificate {Path.Combine(pki, "ca-cert.pem")} has expired");

        // Loaded anyway (sanity-check=false), the source refuses it at the handshake.
        registry.Add(TlsCredentials.Load("tls-client", pki, TlsEndpoint.Client, sanityCheck: false));
        registry.Add(TlsCredentials.Load("tls-server", pki, TlsEndpoint.Server, verifyPeer: false, sanityCheck: false));
        var error = await Assert.ThrowsExactlyAsync<TransportException>(() => ConnectAsync("tcp", Client(registry, "tcp:127.0.0.1:1"), Server(registry)));
        StringAssert.Contains(error.Message, "as client");
        StringAssert.Contains(error.Message, "expired");
    }

    [TestMethod]
    public async Task ServerCertificateForAnotherName_IsRefused_SayingToSetTlsHostname()
    {
        (TlsCredentialsRegistry registry, _) = Pki(_dir, serverNames: ["dest.example"]);
        var error = await Assert.ThrowsExactlyAsync<TransportException>(() => ConnectAsync("tcp", Client(registry, "tcp:127.0.0.1:1"), Server(registry)));
        StringAssert.Contains(error.Message, "is not for '127.0.0.1'");
        StringAssert.Contains(error.Message, "tls-hostname");

        // With tls-hostname naming what the certificate holds, the same pair connects.
        await using Pair pair = await ConnectAsync("tcp", Client(registry, "tcp:127.0.0.1:1", hostname: "dest.example"), Server(registry));
        await pair.Client.Transport.Output.WriteAsync("ok"u8.ToArray());
        Assert.AreEqual("ok", System.Text.Encoding.ASCII.GetString(await ReadExactlyAsync(pair.Server.Transport.Input, 2).WaitAsync(TimeSpan.FromSeconds(30))));
    }

    [TestMethod]
    public async Task SourceWithoutCertificate_IsRefusedByAVerifyingDestination_AndAcceptedWithoutVerifyPeer()
    {
        (_, string pki) = Pki(_dir);
        string clientOnlyCa = Path.Combine(_dir, "client-no-cert");
        Directory.CreateDirectory(clientOnlyCa);
        File.Copy(Path.Combine(pki, "ca-cert.pem"), Path.Combine(clientOnlyCa, "ca-cert.pem"));
        var registry = new TlsCredentialsRegistry();
        registry.Add(TlsCredentials.Load("tls-client", clientOnlyCa, TlsEndpoint.Client));
        registry.Add(TlsCredentials.Load("tls-server", pki, TlsEndpoint.Server));
        Assert.IsNull(registry.Resolve("tls-client", TlsEndpoint.Client).Certificate);

        Exception error = await Assert.ThrowsAsync<Exception>(() => ConnectAsync("tcp", Client(registry, "tcp:127.0.0.1:1"), Server(registry)));
        // The destination names the missing certificate; the source sees the destination give up.
        StringAssert.Contains(error.ToString(), "presented no certificate");

        var lenient = new TlsCredentialsRegistry();
        lenient.Add(TlsCredentials.Load("tls-client", clientOnlyCa, TlsEndpoint.Client));
        lenient.Add(TlsCredentials.Load("tls-server", pki, TlsEndpoint.Server, verifyPeer: false));
        await using Pair pair = await ConnectAsync("tcp", Client(lenient, "tcp:127.0.0.1:1"), Server(lenient));
        await pair.Client.Transport.Output.WriteAsync("ok"u8.ToArray());
        Assert.AreEqual("ok", System.Text.Encoding.ASCII.GetString(await ReadExactlyAsync(pair.Server.Transport.Input, 2).WaitAsync(TimeSpan.FromSeconds(30))));
    }

    [TestMethod]
    public async Task PlainSource_IsRefusedByATlsDestination_SayingToSetTlsCreds()
    {
        (TlsCredentialsRegistry registry, _) = Pki(_dir);
        IMigrationTransport transport = Catalog.GetTransport("tcp");
        await using IMigrationListener listener = await transport.ListenAsync(new TransportEndpoint("tcp", "127.0.0.1:0"));
        Task<IMigrationConnection> accepted = listener.AcceptAsync().AsTask();
        await using IMigrationConnection plain = await transport.ConnectAsync(listener.Endpoint);
        await plain.Transport.Output.WriteAsync(new byte[] { 0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 3 }); // QEMU's stream header.
        var error = await Assert.ThrowsExactlyAsync<TransportException>(async () => await Server(registry).WrapAsync(await accepted, CancellationToken.None));
        StringAssert.Contains(error.Message, "TLS handshake with");
        StringAssert.Contains(error.Message, "as server");
        StringAssert.Contains(error.Message, "Check that the source has tls-creds set");
    }

    [TestMethod]
    public async Task WarmUp_HandshakesInMemory_AndMovesItsBytes()
    {
        // What the registry starts on its first credentials: a whole handshake (the server checking
        // the client's certificate and the client the server's name) and 64 KiB through the wrappers.
        Assert.AreEqual(64L * 1024, await TlsWarmUp.ExerciseAsync().WaitAsync(TimeSpan.FromSeconds(30)));
        _ = Pki(_dir);
        await TlsWarmUp.Completion.WaitAsync(TimeSpan.FromSeconds(30));
    }

    [TestMethod]
    public void SessionFor_RefusesWhatTlsCannotDo_WithQemusMessages()
    {
        (TlsCredentialsRegistry registry, _) = Pki(_dir);
        Assert.IsNull(TlsSession.For(registry, "", "", TransportEndpoint.Parse("tcp:127.0.0.1:1"), outgoing: true), "no tls-creds: plain");
        StringAssert.StartsWith(Assert.ThrowsExactly<ArgumentException>(() => TlsSession.For(registry, "nope", "", TransportEndpoint.Parse("tcp:h:1"), outgoing: true)).Message, "No TLS credentials with id 'nope' (known: tls-client, tls-server)");
        StringAssert.StartsWith(Assert.ThrowsExactly<ArgumentException>(() => TlsSession.For(registry, "tls-server", "", TransportEndpoint.Parse("tcp:h:1"), outgoing: true)).Message, "Expecting TLS credentials with a client endpoint");
        StringAssert.StartsWith(Assert.ThrowsExactly<ArgumentException>(() => TlsSession.For(registry, "tls-client", "", TransportEndpoint.Parse("tcp:0:1"), outgoing: false)).Message, "Expecting TLS credentials with a server endpoint");
        StringAssert.StartsWith(Assert.ThrowsExactly<ArgumentException>(() => TlsSession.For(registry, "tls-client", "", TransportEndpoint.Parse("unix:/tmp/x.sock"), outgoing: true)).Message, "No hostname available for TLS");
        StringAssert.Contains(Assert.ThrowsExactly<ArgumentException>(() => TlsSession.For(registry, "tls-client", "", TransportEndpoint.Parse("file:/tmp/x"), outgoing: true)).Message, "a file has no peer");
        Assert.AreEqual("::1", TlsSession.For(registry, "tls-client", "", TransportEndpoint.Parse("tcp:[::1]:4444"), outgoing: true)!.Hostname);
        Assert.AreEqual("dest", TlsSession.For(registry, "tls-client", "dest", TransportEndpoint.Parse("unix:/tmp/x.sock"), outgoing: true)!.Hostname);
    }
}
