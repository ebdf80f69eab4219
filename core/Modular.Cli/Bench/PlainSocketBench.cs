using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace Modular.Cli.Bench;

/// <summary>
/// The baseline: how fast a plain <see cref="Socket"/> moves bytes over loopback tcp or a unix socket
/// on this machine right now (one sender, one receiver, 1 MiB writes), so migration throughput can be
/// read as a fraction of what the host allows.
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

        var clock = Stopwatch.StartNew();
        Task send = Task.Run(async () =>
        {
            byte[] buffer = GC.AllocateArray<byte>(Chunk, pinned: true);
            Random.Shared.NextBytes(buffer);
            for (ulong sent = 0; sent < bytes; sent += Chunk)
            {
                int n = (int)Math.Min(Chunk, bytes - sent);
                await sender.SendAsync(buffer.AsMemory(0, n));
            }

            sender.Shutdown(SocketShutdown.Send);
        });
        Task<ulong> receive = Task.Run(async () =>
        {
            byte[] buffer = GC.AllocateArray<byte>(Chunk, pinned: true);
            ulong total = 0;
            int n;
            while ((n = await receiver.ReceiveAsync(buffer.AsMemory())) > 0)
            {
                total += (ulong)n;
            }

            return total;
        });
        await send;
        ulong received = await receive;
        double seconds = clock.Elapsed.TotalSeconds;
        if (scheme == "unix")
        {
            File.Delete(((UnixDomainSocketEndPoint)endPoint).ToString());
        }

        return received / seconds;
    }
}
