using System.Net;
using System.Net.Sockets;

namespace Modular.Transports.Shared;

/// <summary>
/// Connect and the channel handshake as blocking calls, each on a thread of its own, so that a
/// migration socket never meets .NET's async machinery. An async call registers the socket with
/// .NET's epoll thread for good and leaves its descriptor non-blocking: every later arrival then
/// woke that thread too, next to the receive thread that blocks in recv(2)
/// (<see cref="ThreadedSocketPipe"/>), a second runnable thread per page request on a 2-core host.
/// A cancel closes the socket, which ends the call; the caller sees <see cref="OperationCanceledException"/>.
/// </summary>
internal static class BlockingSocketCalls
{
    /// <summary>connect(2) to <paramref name="endPoint"/>.</summary>
    internal static Task ConnectAsync(Socket socket, EndPoint endPoint, CancellationToken cancellationToken) =>
        RunAsync(socket, () =>
        {
            socket.Connect(endPoint);
            return true;
        }, cancellationToken);

    /// <summary>Sends all of <paramref name="bytes"/>.</summary>
    internal static Task SendAsync(Socket socket, byte[] bytes, CancellationToken cancellationToken) =>
        RunAsync(socket, () => socket.Send(bytes), cancellationToken);

    /// <summary>Reads exactly <paramref name="length"/> bytes; null when the peer closed first.</summary>
    internal static Task<byte[]?> ReceiveExactlyAsync(Socket socket, int length, CancellationToken cancellationToken) =>
        RunAsync(socket, () =>
        {
            byte[] bytes = new byte[length];
            int got = 0;
            while (got < length)
            {
                int n = socket.Receive(bytes.AsSpan(got));
                if (n == 0)
                {
                    return null;
                }

                got += n;
            }

            return bytes;
        }, cancellationToken);

    private static Task<T> RunAsync<T>(Socket socket, Func<T> call, CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        return Task.Factory.StartNew(
            () =>
            {
                bool closed = false;
                T result;
                using (cancellationToken.Register(() =>
                {
                    closed = true;
                    socket.Dispose();
                }))
                {
                    try
                    {
                        result = call();
                    }
                    catch (Exception ex) when (cancellationToken.IsCancellationRequested && ex is SocketException or ObjectDisposedException)
                    {
                        throw new OperationCanceledException(cancellationToken);
                    }
                }

                // The registration is gone now (its Dispose waits for a callback that has begun): a
                // cancel that came just as the call succeeded has still closed the socket.
                return closed ? throw new OperationCanceledException(cancellationToken) : result;
            },
            CancellationToken.None,
            TaskCreationOptions.LongRunning,
            TaskScheduler.Default);
    }
}
