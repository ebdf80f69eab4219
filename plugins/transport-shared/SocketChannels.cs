using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Modular.Abstractions.Transports;

namespace Modular.Transports.Shared;

/// <summary>
/// How a socket connection opens its extra channels (<see cref="IExtraChannels"/>) and raw channels
/// (<see cref="IRawChannels"/>; one numbering, one handshake): the connecting end
/// dials the same endpoint again and says which channel this is; the accepting end takes the next such
/// connection from the listener that accepted the main connection and answers.
/// </summary>
/// <remarks>
/// Wire format, before any channel data: the connecting end sends the hello (8 bytes "MODXCHAN",
/// be32 channel index); the accepting end answers with the ack (8 bytes "MODXCACK", the same be32
/// index). A listener serves one migration at a time, as QEMU's -incoming does, so a channel belongs to
/// the connection that listener accepted last. A connection that does not start with a hello for the
/// wanted index is closed and the accepting end keeps waiting.
/// </remarks>
internal abstract class SocketChannelOpener
{
    internal const int HandshakeLength = 12;
    private static readonly TimeSpan HelloTimeout = TimeSpan.FromSeconds(5);

    /// <summary>Opens channel <paramref name="index"/>: a connected socket past the handshake, and a description for errors.</summary>
    internal abstract ValueTask<Socket> OpenAsync(int index, string mainDescription, CancellationToken cancellationToken);

    internal static byte[] Handshake(ReadOnlySpan<byte> magic, int index)
    {
        byte[] bytes = new byte[HandshakeLength];
        magic.CopyTo(bytes);
        BinaryPrimitives.WriteInt32BigEndian(bytes.AsSpan(8), index);
        return bytes;
    }

    /// <summary>Reads exactly <see cref="HandshakeLength"/> bytes; null when the peer closed first.</summary>
    internal static Task<byte[]?> ReadHandshakeAsync(Socket socket, CancellationToken cancellationToken) =>
        BlockingSocketCalls.ReceiveExactlyAsync(socket, HandshakeLength, cancellationToken);

    internal static bool Matches(byte[]? handshake, ReadOnlySpan<byte> magic, int index) =>
        handshake is not null && handshake.AsSpan(0, 8).SequenceEqual(magic) && BinaryPrimitives.ReadInt32BigEndian(handshake.AsSpan(8)) == index;

    internal static ReadOnlySpan<byte> HelloMagic => "MODXCHAN"u8;

    internal static ReadOnlySpan<byte> AckMagic => "MODXCACK"u8;

    /// <summary>The connecting end: dial the main connection's endpoint again, send the hello, wait for the ack.</summary>
    internal sealed class Dialer(EndPoint endPoint, ProtocolType protocol) : SocketChannelOpener
    {
        internal override async ValueTask<Socket> OpenAsync(int index, string mainDescription, CancellationToken cancellationToken)
        {
            var socket = new Socket(endPoint.AddressFamily, SocketType.Stream, protocol);
            try
            {
                await BlockingSocketCalls.ConnectAsync(socket, endPoint, cancellationToken).ConfigureAwait(false);
                SocketPipeTuning.Configure(socket);
                await BlockingSocketCalls.SendAsync(socket, Handshake(HelloMagic, index), cancellationToken).ConfigureAwait(false);
                byte[]? ack = await ReadHandshakeAsync(socket, cancellationToken).ConfigureAwait(false);
                if (!Matches(ack, AckMagic, index))
                {
                    throw new TransportException($"Opening channel {index} of {mainDescription} failed: the peer {(ack is null ? "closed the channel's connection" : "answered with something other than the channel ack")}. Is the peer a Modular destination that expects channel {index}?");
                }

                return socket;
            }
            catch (SocketException ex)
            {
                socket.Dispose();
                throw new TransportException($"Opening channel {index} of {mainDescription} failed: {ex.Message}. Is the destination still listening there?", ex);
            }
            catch
            {
                socket.Dispose();
                throw;
            }
        }
    }

    /// <summary>The accepting end: take connections from the main connection's listener until one says hello for the channel.</summary>
    internal sealed class Acceptor(Socket listener, string listenerDescription) : SocketChannelOpener
    {
        internal override async ValueTask<Socket> OpenAsync(int index, string mainDescription, CancellationToken cancellationToken)
        {
            while (true)
            {
                Socket accepted;
                try
                {
                    accepted = await listener.AcceptAsync(cancellationToken).ConfigureAwait(false);
                }
                catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
                {
                    throw new TransportException($"Accepting channel {index} of {mainDescription} on {listenerDescription} failed: {ex.Message}. Extra channels arrive on the listener that accepted the main connection; keep it open until they have.", ex);
                }

                try
                {
                    using var helloTimeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
                    helloTimeout.CancelAfter(HelloTimeout);
                    byte[]? hello = await ReadHandshakeAsync(accepted, helloTimeout.Token).ConfigureAwait(false);
                    if (Matches(hello, HelloMagic, index))
                    {
                        await BlockingSocketCalls.SendAsync(accepted, Handshake(AckMagic, index), cancellationToken).ConfigureAwait(false);
                        SocketPipeTuning.Configure(accepted);
                        return accepted;
                    }
                }
                catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
                {
                    // This peer said nothing in time: not our channel.
                }
                catch (SocketException)
                {
                    // This peer went away during the handshake: not our channel.
                }

                accepted.Dispose();
            }
        }
    }
}
