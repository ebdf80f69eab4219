using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Modular.Core.Memory;

namespace Modular.Cli.Bench;

/// <summary>
/// The baseline: how fast a plain <see cref="Socket"/> moves bytes over loopback tcp or a unix socket
/// on this machine right now (one sender, one receiver, 1 MiB writes), so migration throughput can be
/// read as a fraction of what the host allows. Sender and receiver are two dedicated threads in
/// blocking send(2)/recv(2), as in a C program, with the 4 MiB socket buffers the transports use, so
/// the figure does not depend on the thread pool (an async loop on it measured unix at 4 GB/s with
/// the pool's default spinning and 2 GB/s without; this measures 5.6-6.3 GB/s, as C does here).
/// </summary>
/// <remarks>
/// The plain figure sends one 1 MiB buffer over and over into another, both warm in the CPU's
/// caches. A migration reads every page of guest RAM once and writes every page of the
/// destination's once, which no cache holds. <see cref="GuestSizedMemory"/> measures the same socket
/// with that memory: from populated private memory of the guest's size into populated shared memory of
/// that size, as Modular's source and destination hold guest RAM by default. Measured here, 1 GiB,
/// two runs: unix 4.3-4.7 GB/s where the warm buffer gave 5.3-5.8 GB/s just before; tcp 2.8-3.1 GB/s
/// against 2.5-2.6 GB/s. So the memory costs a loopback socket little: most of the gap between a
/// plain precopy over unix (2.3-2.4 GB/s) and the socket is Modular's, not the memory's.
/// </remarks>
internal static class PlainSocketBench
{
    private const int Chunk = 1 << 20;

    /// <summary>Moves <paramref name="bytes"/> from one socket to another; returns bytes per second.</summary>
    /// <param name="scheme">tcp or unix.</param>
    /// <param name="bytes">How much to move (with <paramref name="memory"/>: at most its size).</param>
    /// <param name="directory">Where a unix socket file may be made.</param>
    /// <param name="memory">Send from its source and receive into its destination, each byte once; null for the warm 1 MiB buffers.</param>
    public static async Task<double> MeasureAsync(string scheme, ulong bytes, string directory, GuestSizedMemory? memory = null)
    {
        if (memory is not null && bytes > memory.Size)
        {
            throw new ArgumentOutOfRangeException(nameof(bytes), bytes, $"at most the memory's {memory.Size} bytes");
        }

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
                int length = (int)Math.Min(Chunk, bytes - sent);
                sent += (ulong)sender.Send(memory is null ? buffer.AsSpan(0, length) : memory.Source(sent, length), SocketFlags.None);
            }

            sender.Shutdown(SocketShutdown.Send);
        }) { IsBackground = true, Name = "bench plain send" };
        ulong received = 0;
        var receive = new Thread(() =>
        {
            byte[] buffer = GC.AllocateArray<byte>(Chunk, pinned: true);
            int n;
            while ((n = receiver.Receive(memory is null || received >= bytes ? buffer : memory.Destination(received, (int)Math.Min(Chunk, bytes - received)))) > 0)
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

/// <summary>
/// Two guest-sized memories for <see cref="PlainSocketBench"/>: private anonymous memory (a source's
/// guest RAM) and shared memory (a destination's, memory-backend auto with --incoming), each
/// populated first, as a destination populates its RAM while it waits. Made as guest RAM is
/// (<see cref="GuestRam"/>); the bench's own, never registered with a fault backend.
/// </summary>
internal sealed unsafe class GuestSizedMemory : IDisposable
{
    private readonly GuestRam _source;
    private readonly GuestRam _destination;

    private GuestSizedMemory(GuestRam source, GuestRam destination)
    {
        _source = source;
        _destination = destination;
    }

    /// <summary>Bytes in each.</summary>
    public ulong Size => _source.Size;

    /// <summary>Maps and populates both (about a second for 1 GiB here).</summary>
    /// <exception cref="GuestRamAllocationException">The host cannot give the memory, or cannot populate it ahead.</exception>
    public static GuestSizedMemory Create(ulong size)
    {
        GuestRam source = GuestRam.Create(size);
        try
        {
            GuestRam destination = GuestRam.Create(size, GuestRamBacking.SharedMemfd);
            try
            {
                foreach (RamBlock block in source.Blocks.Concat(destination.Blocks))
                {
                    // Populated with MADV_POPULATE_WRITE, which fails (rather than the OOM killer
                    // stepping in) when the host has not got the memory.
                    if (!block.Populate())
                    {
                        throw new GuestRamAllocationException(
                            $"Cannot populate {size >> 20} MiB for the memory-to-memory socket (MADV_POPULATE_WRITE failed: the host lacks the memory, or the kernel is older than 5.14).");
                    }
                }
            }
            catch
            {
                destination.Dispose();
                throw;
            }

            // Each source page starts with its number (what a test checks arrived where it belongs).
            RamBlock from = source.Blocks[0];
            for (ulong at = 0; at < from.Size; at += RamBlock.TargetPageSize)
            {
                *(ulong*)((byte*)from.HostAddress + at) = at / RamBlock.TargetPageSize + 1;
            }

            return new GuestSizedMemory(source, destination);
        }
        catch
        {
            source.Dispose();
            throw;
        }
    }

    /// <summary>The number the source page at <paramref name="page"/> starts with (its index plus one), as read from the destination: 0 where nothing arrived.</summary>
    public ulong DestinationMark(ulong page)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(page, Size / RamBlock.TargetPageSize);
        return *(ulong*)((byte*)_destination.Blocks[0].HostAddress + (page * RamBlock.TargetPageSize));
    }

    /// <summary>Bytes [offset, offset + length) of the source memory.</summary>
    public ReadOnlySpan<byte> Source(ulong offset, int length) => Slice(_source, offset, length);

    /// <summary>Bytes [offset, offset + length) of the destination memory.</summary>
    public Span<byte> Destination(ulong offset, int length) => Slice(_destination, offset, length);

    public void Dispose()
    {
        _source.Dispose();
        _destination.Dispose();
    }

    private static Span<byte> Slice(GuestRam ram, ulong offset, int length)
    {
        RamBlock block = ram.Blocks[0];
        ArgumentOutOfRangeException.ThrowIfGreaterThan(offset + (ulong)length, block.Size, nameof(offset));
        return new Span<byte>((byte*)block.HostAddress + offset, length);
    }
}
