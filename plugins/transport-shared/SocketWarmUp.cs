using System.Net;
using System.Net.Sockets;
using Modular.Abstractions.Transports;

namespace Modular.Transports.Shared;

/// <summary>
/// The socket transports' <see cref="Modular.Abstractions.Plugins.IWarmUpPlugin.WarmUp"/>: parks the
/// next connection's receive threads (<see cref="StandbyThreads"/>) and, once per process, before it
/// returns, opens one raw channel over loopback the way a migration does (the channel handshake,
/// then a send, a receive, the end of the stream, and closing) and throws it away. Before it returns,
/// not in the background: its sockets must be gone when the caller goes on (a plugin's descriptors
/// opening and closing behind its user's back made the conformance kit's descriptor count fail
/// once). It takes a few milliseconds. Measured inside a
/// multifd migration on this host before this: opening the first channel loaded the plugin's libc
/// binding and compiled the handshake (about 5 ms on each side), and closing the first raw channel
/// took 5-8 ms (the runtime's socket diagnostics set up on first close), the destination's part of
/// it inside the downtime the source measures. A host without loopback skips this; its first
/// migration then pays those costs.
/// It also fills the pipes' segment pool (<see cref="RecyclingMemoryPool.EnsureFree"/>) with the
/// blocks the next connection's pipe takes when it is made: 18 blocks of 256 KiB, allocated on the
/// large object heap. Measured before this, on a source: making the connection's pipe took 8-20 ms
/// for that allocation, inside the migration's setup (a unix migration's setup 15-37 ms against
/// 6-7 ms with the pool filled here; the whole idle 1 GiB migration takes about 0.2 s).
/// </summary>
internal static class SocketWarmUp
{
    private static int _started;

    /// <summary>Parks the threads, fills the segment pool and, the first time, runs the raw channel (a few milliseconds; bounded by the handshake's timeout). Any thread; idempotent.</summary>
    internal static void Prepare()
    {
        StandbyThreads.Prepare();
        RecyclingMemoryPool.Segments.EnsureFree(RecyclingMemoryPool.SegmentsPerPipe);
        if (Interlocked.Exchange(ref _started, 1) == 0)
        {
            _ = Task.Run(ExerciseAsync).GetAwaiter().GetResult();
        }
    }

    /// <summary>One raw channel, end to end, over 127.0.0.1. Returns false (and leaves nothing open) when loopback is not usable.</summary>
    internal static async Task<bool> ExerciseAsync()
    {
        try
        {
            using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            listener.Listen(1);
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
            ValueTask<Socket> accepting = new SocketChannelOpener.Acceptor(listener, "warm-up").OpenAsync(1, "warm-up", timeout.Token);
            Socket dialed = await new SocketChannelOpener.Dialer(listener.LocalEndPoint!, ProtocolType.Tcp).OpenAsync(1, "warm-up", timeout.Token).ConfigureAwait(false);
            Socket accepted;
            try
            {
                accepted = await accepting.ConfigureAwait(false);
            }
            catch
            {
                dialed.Dispose();
                throw;
            }

            using var sending = new SocketRawChannel(dialed, "warm-up", 1);
            using var receiving = new SocketRawChannel(accepted, "warm-up", 1);
            return Transfer(sending, receiving);
        }
        catch (Exception ex) when (ex is SocketException or TransportException or OperationCanceledException or IOException)
        {
            return false;
        }
    }

    private static unsafe bool Transfer(SocketRawChannel sending, SocketRawChannel receiving)
    {
        byte* bytes = stackalloc byte[16];
        bytes[0] = 1;
        sending.Send([new RawSegment((nint)bytes, 8)]);
        sending.CompleteSend();
        bool got = receiving.Receive([new RawSegment((nint)(bytes + 8), 8)]);
        bool ended = !receiving.Receive([new RawSegment((nint)(bytes + 8), 8)]);
        return got && ended && bytes[8] == 1;
    }
}
