using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace Modular.Cli.Bench;

/// <summary>
/// The baseline: how fast a plain <see cref="Socket"/> moves bytes over loopback tcp or a unix socket
/// on this machine right now (one sender, one receiver, 1 MiB writes), so migration throughput can be
/// read as a fraction of what the host allows. Sender and receiver are two dedicated threads in
/// blocking send(2)/recv(2), as in a C program, with the 4 MiB socket buffers the transports use, so
/// the figure does not depend on the thread pool (an async loop on it measured unix at 4 GB/s with
/// the pool's default spinning and 2 GB/s without; this measures 5.6-6.3 GB/s, as C does here).
/// </summary>
internal static class PlainSocketBench
{
    private const int Chunk = 1 << 20;

    /// <summary>Moves <paramref name="bytes"/> from one socket to another; returns bytes per second.</summary>
    /// <param name="scheme">tcp or unix.</param>
    /// <param name="bytes">How much to move.</param>
    /// <param name="directory">Where a unix socket file may be made.</param>
    public static async Task<double> MeasureAsync(string scheme, ulong bytes, string directory)
    {
        (EndPoint endPoint, AddressFamily family, ProtocolType protocol) = scheme switch
        {
            "tcp" => ((EndPoint)new IPEndPoint(IPAddress.Loopback, 0), AddressFamily.InterNetwork, ProtocolType.Tcp),
            "unix" => (new UnixDomainSocketEndPoint(Path.Combine(directory, "plain.sock")), AddressFamily.Unix, ProtocolType.Unspecified),
            _ => throw new ArgumentOutOfRangeException(nameof(scheme), scheme, "tcp or unix"),
        };
        using var listener = new Socket(family, SocketType.Stream, protocol);
        listener.Bind(endPoint);
        listener.Listen(1);
        using var sender = new Socket(family, SocketType.Stream, protocol);
        await sender.ConnectAsync(listener.LocalEndPoint!);
        using Socket receiver = await listener.AcceptAsync();
        if (scheme == "tcp")
        {
            sender.NoDelay = true;
        }

        foreach (Socket socket in new[] { sender, receiver })
        {
            socket.SendBufferSize = 4 << 20;
            socket.ReceiveBufferSize = 4 << 20;
        }

        var clock = Stopwatch.StartNew();
        var send = new Thread(() =>
        {
            byte[] buffer = GC.AllocateArray<byte>(Chunk, pinned: true);
            Random.Shared.NextBytes(buffer);
            for (ulong sent = 0; sent < bytes;)
            {
                sent += (ulong)sender.Send(buffer, 0, (int)Math.Min(Chunk, bytes - sent), SocketFlags.None);
            }

            sender.Shutdown(SocketShutdown.Send);
        }) { IsBackground = true, Name = "bench plain send" };
        ulong received = 0;
        var receive = new Thread(() =>
        {
            byte[] buffer = GC.AllocateArray<byte>(Chunk, pinned: true);
            int n;
            while ((n = receiver.Receive(buffer)) > 0)
            {
                received += (ulong)n;
            }
        }) { IsBackground = true, Name = "bench plain recv" };
        send.Start();
        receive.Start();
        await Task.Run(() =>
        {
            send.Join();
            receive.Join();
        });
        double seconds = clock.Elapsed.TotalSeconds;
        if (scheme == "unix")
        {
            File.Delete(((UnixDomainSocketEndPoint)endPoint).ToString());
        }

        return received / seconds;
    }
}
