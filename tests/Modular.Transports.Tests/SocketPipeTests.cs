extern alias tcp;

using System.Net;
using System.Net.Sockets;
using Pipelines.Sockets.Unofficial;
using ISocketPipe = tcp::Modular.Transports.Shared.ISocketPipe;
using PipelinesSocketPipe = tcp::Modular.Transports.Shared.PipelinesSocketPipe;
using SocketPipeTuning = tcp::Modular.Transports.Shared.SocketPipeTuning;
using ThreadedSocketPipe = tcp::Modular.Transports.Shared.ThreadedSocketPipe;

namespace Modular.Transports.Tests;

/// <summary>
/// The two ways the tcp and unix transports run a main connection (<see cref="ISocketPipe"/>): the
/// threaded pipes in use, and Pipelines.Sockets.Unofficial (kept selectable for comparison). Each
/// carries data both ways intact, tells an orderly end from a reset, and closes without throwing.
/// </summary>
[TestClass]
public sealed class SocketPipeTests
{
    public static IEnumerable<object[]> Kinds => [["threaded"], ["pipelines-sockets"]];

    [TestMethod]
    [DynamicData(nameof(Kinds))]
    public async Task CarriesBothDirectionsIntact(string kind)
    {
        (Socket a, Socket b) = await ConnectedPairAsync();
        ISocketPipe source = Wrap(kind, a, connecting: true);
        ISocketPipe destination = Wrap(kind, b, connecting: false);
        try
        {
            const long forward = 16 << 20, back = 1 << 20;
            Task<ulong> sendForward = TransportTestKit.SendAsync(source.Output, forward);
            Task<ulong> sendBack = TransportTestKit.SendAsync(destination.Output, back);
            Task<(long, ulong)> receiveForward = TransportTestKit.ReceiveAllAsync(destination.Input);
            Task<(long, ulong)> receiveBack = TransportTestKit.ReceiveAllAsync(source.Input);
            Assert.AreEqual((forward, await sendForward.WithTimeout()), await receiveForward.WithTimeout(), $"{kind}: forward bytes");
            Assert.AreEqual((back, await sendBack.WithTimeout()), await receiveBack.WithTimeout(), $"{kind}: return bytes");
            Assert.AreEqual(SocketError.Success, destination.Error, $"{kind}: an orderly end is not an error");
        }
        finally
        {
            source.Close();
            destination.Close();
        }
    }

    [TestMethod]
    [DynamicData(nameof(Kinds))]
    public async Task AResetIsRecordedAndClosingNeverThrows(string kind)
    {
        (Socket a, Socket b) = await ConnectedPairAsync();
        ISocketPipe destination = Wrap(kind, b, connecting: false);
        a.LingerState = new LingerOption(true, 0);
        a.Close(); // RST

        Exception? failure = null;
        try
        {
            await TransportTestKit.ReceiveAllAsync(destination.Input).WithTimeout();
        }
        catch (IOException ex)
        {
            failure = ex;
        }

        Assert.IsNotNull(failure, $"{kind}: the reader must see the reset as a failure, not as the end of the stream");
        StringAssert.Contains(failure.Message, "reset", $"{kind}: the failure says what happened");
        Assert.AreEqual(SocketError.ConnectionReset, destination.Error, $"{kind}: a reset must be told from an orderly end");
        destination.Close();
        destination.Close();
    }

    private static ISocketPipe Wrap(string kind, Socket socket, bool connecting) => kind == "threaded"
        ? connecting ? new ThreadedSocketPipe(socket, "test source", "test recv", poolSends: true) : new ThreadedSocketPipe(socket, "test destination", "test recv", latencyReceive: false)
        : new PipelinesSocketPipe(SocketConnection.Create(socket, SocketPipeTuning.Options, SocketPipeTuning.ChannelOptions, SocketConnectionOptions.InlineReads, kind));

    private static async Task<(Socket, Socket)> ConnectedPairAsync()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(1);
        var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        Task<Socket> accepted = listener.AcceptAsync();
        await client.ConnectAsync(listener.LocalEndPoint!);
        return (client, await accepted);
    }
}
