using System.Diagnostics;
using System.IO.Pipelines;
using System.Net.Sockets;
using Modular.Abstractions.Transports;
using Modular.Core.Migration.Stream;
using Modular.Transports.Tcp;
using Modular.Transports.Unix;

namespace Modular.Transports.Tests;

/// <summary>Behaviour every socket transport must have, run for tcp and unix.</summary>
public abstract class SocketTransportTests
{
    protected abstract IMigrationTransport Transport { get; }

    /// <summary>An endpoint nobody listens on yet.</summary>
    protected abstract TransportEndpoint FreshEndpoint();

    /// <summary>Whether an abort reaches the peer as a connection reset (TCP) rather than an early end (unix).</summary>
    protected abstract bool PeerSeesReset { get; }

    [TestMethod]
    public async Task ConnectAndListenCarryBothDirectionsConcurrently()
    {
        await using IMigrationListener listener = await Transport.ListenAsync(FreshEndpoint());
        Task<IMigrationConnection> accepting = listener.AcceptAsync().AsTask();
        await using IMigrationConnection source = await Transport.ConnectAsync(listener.Endpoint);
        await using IMigrationConnection destination = await accepting.WithTimeout();

        const long forward = 32 << 20, back = 8 << 20;
        Task<ulong> sendForward = TransportTestKit.SendAsync(source.Transport.Output, forward);
        Task<ulong> sendBack = TransportTestKit.SendAsync(destination.Transport.Output, back);
        Task<(long, ulong)> receiveForward = TransportTestKit.ReceiveAllAsync(destination.Transport.Input);
        Task<(long, ulong)> receiveBack = TransportTestKit.ReceiveAllAsync(source.Transport.Input);
        Assert.AreEqual((forward, await sendForward.WithTimeout()), await receiveForward.WithTimeout());
        Assert.AreEqual((back, await sendBack.WithTimeout()), await receiveBack.WithTimeout());
    }

    [TestMethod]
    public async Task Transfers256MiBIntact()
    {
        await using IMigrationListener listener = await Transport.ListenAsync(FreshEndpoint());
        Task<IMigrationConnection> accepting = listener.AcceptAsync().AsTask();
        await using IMigrationConnection source = await Transport.ConnectAsync(listener.Endpoint);
        await using IMigrationConnection destination = await accepting.WithTimeout();

        const long total = 256L << 20;
        var clock = Stopwatch.StartNew();
        Task<(long, ulong)> receive = TransportTestKit.ReceiveAllAsync(destination.Transport.Input);
        ulong sent = await TransportTestKit.SendAsync(source.Transport.Output, total).WithTimeout();
        Assert.AreEqual((total, sent), await receive.WithTimeout());
        Console.WriteLine($"{listener.Endpoint.Scheme}: 256 MiB checksummed in {clock.Elapsed.TotalMilliseconds:F0} ms");
    }

    [TestMethod]
    public async Task AbortEndsThePeersReadsPromptlyWithAnError()
    {
        await using IMigrationListener listener = await Transport.ListenAsync(FreshEndpoint());
        Task<IMigrationConnection> accepting = listener.AcceptAsync().AsTask();
        await using IMigrationConnection source = await Transport.ConnectAsync(listener.Endpoint);
        await using IMigrationConnection destination = await accepting.WithTimeout();

        ValueTask<ReadResult> pendingLocal = source.Transport.Input.ReadAsync();
        var clock = Stopwatch.StartNew();
        source.Abort(new InvalidOperationException("migrate_cancel"));

        var local = await Assert.ThrowsExactlyAsync<TransportException>(async () => await pendingLocal);
        StringAssert.Contains(local.Message, "was aborted: migrate_cancel.");
        Assert.IsTrue(source.Closed.IsCancellationRequested);

        // The destination reads through the stream codec, as the engine does: the abort surfaces as a
        // stream error naming the offset. TCP carries a reset (the transport error is the cause); a unix
        // socket has no reset, so the peer sees the stream end early.
        var peerReader = new MigrationStreamReader(destination.Transport.Input);
        var peer = await Assert.ThrowsExactlyAsync<MigrationStreamException>(async () => await peerReader.ReadBe32Async("magic").AsTask().WithTimeout());
        Assert.IsTrue(clock.Elapsed < TimeSpan.FromSeconds(5), $"took {clock.Elapsed}");
        if (PeerSeesReset)
        {
            Assert.IsInstanceOfType<TransportException>(peer.InnerException);
            StringAssert.StartsWith(peer.Message, "Migration stream error at byte 0: stream header: the transport failed while reading magic: Reading from the migration connection tcp:");
            StringAssert.EndsWith(peer.Message, "failed: Connection reset by peer.");
        }
        else
        {
            Assert.AreEqual("Migration stream error at byte 0: stream header: truncated: the stream ended where magic (4 bytes) was expected.", peer.Message);
        }

        Assert.IsTrue(destination.Closed.IsCancellationRequested);
    }

    [TestMethod]
    public async Task DisposeReleasesFileDescriptors()
    {
        // Warm up so lazily created runtime handles (epoll, thread pool) are not counted.
        await RoundTrip();
        int before = TransportTestKit.OpenFileDescriptors();
        for (int i = 0; i < 5; i++)
        {
            await RoundTrip();
        }

        await Task.Delay(100);
        Assert.AreEqual(before, TransportTestKit.OpenFileDescriptors());

        async Task RoundTrip()
        {
            await using IMigrationListener listener = await Transport.ListenAsync(FreshEndpoint());
            Task<IMigrationConnection> accepting = listener.AcceptAsync().AsTask();
            await using IMigrationConnection source = await Transport.ConnectAsync(listener.Endpoint);
            await using IMigrationConnection destination = await accepting.WithTimeout();
            await TransportTestKit.SendAsync(source.Transport.Output, 4096);
            await TransportTestKit.ReceiveAllAsync(destination.Transport.Input).WithTimeout();
        }
    }

    [TestMethod]
    public async Task CancelledAcceptLeavesTheListenerUsable()
    {
        await using IMigrationListener listener = await Transport.ListenAsync(FreshEndpoint());
        using (var cts = new CancellationTokenSource(50))
        {
            await Assert.ThrowsAsync<OperationCanceledException>(async () => await listener.AcceptAsync(cts.Token));
        }

        Task<IMigrationConnection> accepting = listener.AcceptAsync().AsTask();
        await using IMigrationConnection source = await Transport.ConnectAsync(listener.Endpoint);
        await using IMigrationConnection destination = await accepting.WithTimeout();
        Assert.IsFalse(destination.Closed.IsCancellationRequested);
    }
}

[TestClass]
public sealed class TcpTransportTests : SocketTransportTests
{
    protected override IMigrationTransport Transport { get; } = new TcpTransport();

    protected override TransportEndpoint FreshEndpoint() => TransportEndpoint.Parse("tcp:127.0.0.1:0");

    protected override bool PeerSeesReset => true;

    [TestMethod]
    public async Task PortZeroReportsTheBoundPort()
    {
        await using IMigrationListener listener = await Transport.ListenAsync(FreshEndpoint());
        StringAssert.StartsWith(listener.Endpoint.ToString(), "tcp:127.0.0.1:");
        Assert.AreNotEqual("0", listener.Endpoint.Address.Split(':')[1]);
    }

    [TestMethod]
    public async Task Ipv6Loopback()
    {
        await using IMigrationListener listener = await Transport.ListenAsync(TransportEndpoint.Parse("tcp:[::1]:0"));
        StringAssert.StartsWith(listener.Endpoint.ToString(), "tcp:[::1]:");
        Task<IMigrationConnection> accepting = listener.AcceptAsync().AsTask();
        await using IMigrationConnection source = await Transport.ConnectAsync(listener.Endpoint);
        await using IMigrationConnection destination = await accepting.WithTimeout();
        Assert.AreEqual(listener.Endpoint.ToString(), source.RemoteDescription);
        StringAssert.StartsWith(destination.RemoteDescription, "tcp:[::1]:");
    }

    [TestMethod]
    public async Task RefusedConnectionSaysSo()
    {
        int port;
        await using (IMigrationListener probe = await Transport.ListenAsync(FreshEndpoint()))
        {
            port = int.Parse(probe.Endpoint.Address.Split(':')[1], System.Globalization.CultureInfo.InvariantCulture);
        }

        var ex = await Assert.ThrowsExactlyAsync<TransportException>(async () => await Transport.ConnectAsync(TransportEndpoint.Parse($"tcp:127.0.0.1:{port}")));
        Assert.AreEqual($"Cannot connect to tcp:127.0.0.1:{port}: connection refused. Is the destination listening there (migrate-incoming tcp:127.0.0.1:{port})?", ex.Message);
    }

    [TestMethod]
    public async Task TakenPortSaysSo()
    {
        await using IMigrationListener first = await Transport.ListenAsync(FreshEndpoint());
        var ex = await Assert.ThrowsExactlyAsync<TransportException>(async () => await Transport.ListenAsync(first.Endpoint));
        Assert.AreEqual($"Cannot listen on {first.Endpoint}: the address is already in use. Stop the process listening there, or use port 0 to pick a free one.", ex.Message);
    }

    [TestMethod]
    [DataRow("tcp:127.0.0.1", "the port is missing")]
    [DataRow("tcp:127.0.0.1:http", "'http' is not a port number (0-65535)")]
    [DataRow("tcp:127.0.0.1:70000", "'70000' is not a port number (0-65535)")]
    [DataRow("tcp:::1:4444", "write an IPv6 address in brackets")]
    public async Task MalformedEndpointSaysWhatIsExpected(string uri, string why)
    {
        var ex = await Assert.ThrowsExactlyAsync<TransportException>(async () => await Transport.ConnectAsync(TransportEndpoint.Parse(uri)));
        Assert.AreEqual($"'{uri}' is not a valid tcp endpoint ({why}): tcp:HOST:PORT expected, for example tcp:127.0.0.1:4444 or tcp:[::1]:4444.", ex.Message);
    }
}

[TestClass]
public sealed class UnixTransportTests : SocketTransportTests
{
    private readonly string _dir = Directory.CreateTempSubdirectory("modular-unix-").FullName;
    private int _next;

    protected override IMigrationTransport Transport { get; } = new UnixTransport();

    protected override TransportEndpoint FreshEndpoint() => new("unix", Path.Combine(_dir, $"mig{_next++}.sock"));

    protected override bool PeerSeesReset => false;

    [TestCleanup]
    public void Cleanup() => Directory.Delete(_dir, recursive: true);

    /// <summary>
    /// A socket file whose process died. .NET unlinks the path when it disposes a socket it bound, so bind
    /// elsewhere and hard-link the socket inode to the path first.
    /// </summary>
    private static void LeaveStaleSocket(string path)
    {
        string bound = path + ".bound";
        using var dead = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        dead.Bind(new UnixDomainSocketEndPoint(bound));
        using Process ln = Process.Start("ln", [bound, path]);
        ln.WaitForExit();
        Assert.AreEqual(0, ln.ExitCode, "ln failed");
    }

    [TestMethod]
    public async Task StaleSocketFileIsRemoved()
    {
        TransportEndpoint endpoint = FreshEndpoint();
        LeaveStaleSocket(endpoint.Address);

        Assert.IsTrue(File.Exists(endpoint.Address), "the stale socket file is there");
        await using IMigrationListener listener = await Transport.ListenAsync(endpoint);
        Task<IMigrationConnection> accepting = listener.AcceptAsync().AsTask();
        await using IMigrationConnection source = await Transport.ConnectAsync(endpoint);
        await using IMigrationConnection destination = await accepting.WithTimeout();
    }

    [TestMethod]
    public async Task LivePathSaysSo()
    {
        await using IMigrationListener first = await Transport.ListenAsync(FreshEndpoint());
        var ex = await Assert.ThrowsExactlyAsync<TransportException>(async () => await Transport.ListenAsync(first.Endpoint));
        Assert.AreEqual($"Cannot listen on {first.Endpoint}: another process is listening on that socket. Stop it or choose another path.", ex.Message);
    }

    [TestMethod]
    public async Task RegularFileIsNotRemoved()
    {
        TransportEndpoint endpoint = FreshEndpoint();
        await File.WriteAllTextAsync(endpoint.Address, "keep me");
        var ex = await Assert.ThrowsExactlyAsync<TransportException>(async () => await Transport.ListenAsync(endpoint));
        Assert.AreEqual($"Cannot listen on {endpoint}: '{endpoint.Address}' exists and is not a socket. Remove it or choose another path.", ex.Message);
        Assert.AreEqual("keep me", await File.ReadAllTextAsync(endpoint.Address));
    }

    [TestMethod]
    public async Task MissingOrRefusedSocketSaysSo()
    {
        TransportEndpoint endpoint = FreshEndpoint();
        var ex = await Assert.ThrowsExactlyAsync<TransportException>(async () => await Transport.ConnectAsync(endpoint));
        Assert.AreEqual($"Cannot connect to {endpoint}: no socket file there. Is the destination listening there (migrate-incoming {endpoint})?", ex.Message);

        LeaveStaleSocket(endpoint.Address);

        ex = await Assert.ThrowsExactlyAsync<TransportException>(async () => await Transport.ConnectAsync(endpoint));
        Assert.AreEqual($"Cannot connect to {endpoint}: connection refused. Is the destination listening there (migrate-incoming {endpoint})?", ex.Message);
    }

    [TestMethod]
    public async Task ListenerRemovesItsSocketFile()
    {
        IMigrationListener listener = await Transport.ListenAsync(FreshEndpoint());
        Assert.IsTrue(File.Exists(listener.Endpoint.Address));
        await listener.DisposeAsync();
        Assert.IsFalse(File.Exists(listener.Endpoint.Address));
    }
}
