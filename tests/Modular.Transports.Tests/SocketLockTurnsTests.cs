extern alias tcp;

using System.Net.Sockets;
using SocketLockTurns = tcp::Modular.Transports.Shared.SocketLockTurns;
using ThreadedSocketPipe = tcp::Modular.Transports.Shared.ThreadedSocketPipe;

namespace Modular.Transports.Tests;

/// <summary>
/// Turns at a tcp socket's lock (<see cref="SocketLockTurns"/>): a bulk call lets a latency call the
/// other way go first and then stays small for a while, so that a page request sent on the
/// destination's main connection (or one received on the source's) does not sleep behind a long
/// bulk recvmsg or sendmsg. Unix sockets take no turns. With real tcp sockets, the threaded pipe
/// takes the turns on both ends of a main connection.
/// </summary>
[TestClass]
public sealed class SocketLockTurnsTests
{
    [TestMethod]
    public void BulkCallsStaySmallForAWhileAfterALatencyCall()
    {
        var turns = new SocketLockTurns(window: TimeSpan.FromMinutes(10), maxWait: TimeSpan.FromSeconds(1));
        Assert.AreEqual(256 * 1024, turns.BeforeBulkCall(256 * 1024), "no latency call yet: the usual size");

        turns.Enter();
        turns.Exit();
        Assert.AreEqual(SocketLockTurns.SmallCall, turns.BeforeBulkCall(256 * 1024), "after a latency call: small");
        Assert.AreEqual(16 * 1024, turns.BeforeBulkCall(16 * 1024), "never larger than asked");
        Assert.AreEqual(2L, turns.SmallCalls);

        var shortWindow = new SocketLockTurns(window: TimeSpan.Zero, maxWait: TimeSpan.FromSeconds(1));
        shortWindow.Enter();
        shortWindow.Exit();
        Assert.AreEqual(256 * 1024, shortWindow.BeforeBulkCall(256 * 1024), "once the window is over: the usual size again");
    }

    [TestMethod]
    public async Task ABulkCallWaitsUntilAMarkedLatencyCallIsDone()
    {
        var turns = new SocketLockTurns(window: TimeSpan.Zero, maxWait: TimeSpan.FromSeconds(30));
        turns.Enter();
        turns.Enter(); // two latency threads at once
        Task<int> bulk = Task.Factory.StartNew(() => turns.BeforeBulkCall(256 * 1024), TaskCreationOptions.LongRunning);
        await Task.Delay(200);
        Assert.IsFalse(bulk.IsCompleted, "the bulk call waits while latency calls are marked");

        turns.Exit();
        await Task.Delay(100);
        Assert.IsFalse(bulk.IsCompleted, "one latency call is still marked");

        turns.Exit();
        Assert.AreEqual(SocketLockTurns.SmallCall, await bulk.WithTimeout(), "then it goes, small");
        Assert.AreEqual(1L, turns.Waits);
    }

    [TestMethod]
    public async Task ABulkCallWaitsNoLongerThanItsLimit()
    {
        var turns = new SocketLockTurns(window: TimeSpan.Zero, maxWait: TimeSpan.FromMilliseconds(50));
        turns.Enter(); // a latency call that never returns (a peer that stopped reading, say)
        Task<int> bulk = Task.Factory.StartNew(() => turns.BeforeBulkCall(256 * 1024), TaskCreationOptions.LongRunning);
        Assert.AreEqual(SocketLockTurns.SmallCall, await bulk.WithTimeout(), "the bulk call goes on after its limit");
    }

    [TestMethod]
    public async Task OnlyTcpSocketsTakeTurns()
    {
        (Socket unixA, Socket unixB) = await TransportTestKit.UnixPairAsync();
        using (unixA)
        using (unixB)
        using (var tcpSocket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp))
        {
            Assert.IsNull(SocketLockTurns.For(unixA), "a unix socket's directions share no lock");
            Assert.IsNotNull(SocketLockTurns.For(tcpSocket), "a tcp socket's do");
        }
    }

    /// <summary>
    /// Both ends of a tcp main connection: the source's gather writer sends pages in bulk while page
    /// requests come back on the same socket from a thread of the destination's own, as the fault
    /// thread sends them. Once requests flow, the destination's receive thread takes small receives
    /// and the source's writer small sendmsg calls; the bytes both ways stay intact.
    /// </summary>
    [TestMethod]
    public async Task BothEndsMoveBulkInSmallCallsOnceRequestsFlow()
    {
        (Socket a, Socket b) = await TcpPairAsync();
        var source = new ThreadedSocketPipe(a, "test source", "turns src recv", gatherSends: true);
        var destination = new ThreadedSocketPipe(b, "test destination", "turns dst recv", latencyReceive: false);
        try
        {
            Assert.IsNotNull(source.Turns);
            Assert.IsNotNull(destination.Turns);
            long sourceBefore = source.Turns!.SmallCalls;
            long destinationBefore = destination.Turns!.SmallCalls;
            const long bulk = 256L << 20;
            Task<ulong> send = TransportTestKit.SendAsync(source.Output, bulk, chunk: 1 << 20);
            Task<(long, ulong)> receive = TransportTestKit.ReceiveAllAsync(destination.Input);
            Task<(long, ulong)> requestsIn = TransportTestKit.ReceiveAllAsync(source.Input);
            long requested = await SendRequestsWhileAsync(destination.Output, send);
            Assert.AreEqual((bulk, await send.WithTimeout()), await receive.WithTimeout(), "the bulk data arrived intact");
            Assert.AreEqual(requested, (await requestsIn.WithTimeout()).Item1, "the requests arrived");
            Assert.IsGreaterThan(destinationBefore, destination.Turns.SmallCalls, "the destination's receives after a request were small");
            Assert.IsGreaterThan(sourceBefore, source.Turns.SmallCalls, "the source's sends after a request were small");
        }
        finally
        {
            source.Close();
            destination.Close();
        }
    }

    /// <summary>Writes 23-byte requests, one flush each, on a thread of its own until <paramref name="until"/> ends; then completes the writer. Returns the bytes written.</summary>
    private static Task<long> SendRequestsWhileAsync(System.IO.Pipelines.PipeWriter output, Task until) => Task.Factory.StartNew(() =>
    {
        long written = 0;
        while (!until.IsCompleted)
        {
            output.GetSpan(23)[..23].Fill(0x5a);
            output.Advance(23);
            output.FlushAsync().AsTask().GetAwaiter().GetResult();
            written += 23;
            Thread.Sleep(1);
        }

        output.Complete();
        return written;
    }, TaskCreationOptions.LongRunning);

    private static async Task<(Socket, Socket)> TcpPairAsync()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, 0));
        listener.Listen(1);
        var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        Task<Socket> accepted = listener.AcceptAsync();
        await client.ConnectAsync(listener.LocalEndPoint!);
        return (client, await accepted);
    }
}
