extern alias tcp;

using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using GatherSocketWriter = tcp::Modular.Transports.Shared.GatherSocketWriter;
using SocketPipeTuning = tcp::Modular.Transports.Shared.SocketPipeTuning;
using ThreadedSocketPipe = tcp::Modular.Transports.Shared.ThreadedSocketPipe;

namespace Modular.Transports.Tests;

/// <summary>
/// The source's splice path over a unix socket (<see cref="GatherSocketWriter"/>): pages go to the
/// peer by reference, and the bytes written around them come from a ring whose blocks are reused
/// only once the peer has read them. A block reused too early would change header bytes still
/// queued in the socket: the receiver's checksum would differ.
/// </summary>
[TestClass]
public sealed class SpliceWriterTests
{
    private const int RegionSize = 8 << 20;

    /// <summary>
    /// A long stream of records (headers of varying length written into the writer's memory, then a
    /// page or an unaligned piece of pages by reference) arrives exactly, in order. The ring is small
    /// (64 KiB: a lap is about 2 MiB of stream) and the socket queues up to 8 MiB: with a slow
    /// receiver the ring comes round to blocks the peer has not read yet, and those flushes must be
    /// copied instead. Every 50th flush also writes a record larger than a ring block (chunks).
    /// </summary>
    [TestMethod]
    [DataRow(false)]
    [DataRow(true)]
    public async Task ASplicedStreamArrivesExactlyWhileTheRingIsReused(bool slowReceiver)
    {
        (Socket a, Socket b) = await TransportTestKit.UnixPairAsync();
        a.SendBufferSize = 4 << 20; // the kernel doubles it: 8 MiB may be queued, several laps of the ring
        var writer = new GatherSocketWriter(a, "test unix source", _ => { }, splice: true, ringSize: 64 << 10, ringBlock: 4096);
        nint region = Allocate(RegionSize);
        try
        {
            Assert.IsTrue(writer.Splices, "a unix socket on this kernel splices");
            new Random(7).NextBytes(At(region, RegionSize));
            Task<(long Count, ulong Hash)> received = Task.Factory.StartNew(() => ReceiveAll(b, slowReceiver), TaskCreationOptions.LongRunning);

            var sent = new Fnv1a();
            long total = 0;
            var random = new Random(11);
            for (int flush = 0; flush < 400; flush++)
            {
                int records = 32 + (flush % 48);
                for (int record = 0; record < records; record++)
                {
                    int headerLength = 16 + ((flush * 7) + (record * 13)) % 200;
                    total += WriteHeader(writer, sent, headerLength, flush, record);
                    bool whole = random.Next(4) != 0;
                    int offset = whole ? random.Next(RegionSize / 4096) * 4096 : random.Next(RegionSize - (3 * 4096));
                    int length = whole ? 4096 : 1 + random.Next(3 * 4096); // unaligned pieces take a pipe slot per page touched
                    writer.WriteByReference(region + offset, length);
                    sent.Append(At(region + offset, length));
                    total += length;
                }

                if (flush % 50 == 49)
                {
                    total += WriteHeader(writer, sent, 100 << 10, flush, -1); // larger than a block: from the chunks
                }
                else if (flush % 50 == 24)
                {
                    for (int record = 0; record < 700; record++)
                    {
                        total += WriteHeader(writer, sent, 100, flush, -2 - record); // 70 KB in one flush: more than the ring
                    }
                }

                await writer.FlushAsync().AsTask().WithTimeout();
            }

            writer.Complete();
            Assert.AreEqual((total, sent.Value), await received.WithTimeout(), "the receiver reads exactly what was written, in order");
            Console.WriteLine($"slow receiver {slowReceiver}: {writer.SplicedBytes} of {total} bytes spliced, {writer.RingFallbacks} flushes copied for an unread ring block");
            if (slowReceiver)
            {
                Assert.IsTrue(writer.SplicedBytes > 0, "pages go by splice");
                Assert.IsTrue(writer.RingFallbacks > 0, "a slow receiver leaves ring blocks unread: some flushes are copied instead");
            }
            else
            {
                Assert.IsTrue(writer.SplicedBytes > total / 2, $"most bytes go by splice ({writer.SplicedBytes} of {total})");
            }
        }
        finally
        {
            a.Dispose();
            b.Dispose();
            Free(region);
        }
    }

    /// <summary>
    /// The main connection's source splices over unix (unless <c>MODULAR_UNIX_SPLICE=off</c>) and never
    /// over tcp; a unix source's pages then really go by splice, and small flushes by sendmsg.
    /// </summary>
    [TestMethod]
    public async Task TheUnixSourceSplicesItsPagesAndTcpDoesNot()
    {
        Assert.IsTrue(SocketPipeTuning.SpliceSends, "splicing is on by default");
        (Socket tcpA, Socket tcpB) = await TcpPairAsync();
        var tcpSource = (ThreadedSocketPipe)SocketPipeTuning.Wrap(tcpA, "test tcp source", connecting: true);
        Assert.IsFalse(((GatherSocketWriter)tcpSource.Output).Splices, "tcp never splices");
        tcpSource.Close();
        tcpB.Dispose();

        (Socket a, Socket b) = await TransportTestKit.UnixPairAsync();
        var source = (ThreadedSocketPipe)SocketPipeTuning.Wrap(a, "test unix source", connecting: true);
        var destination = (ThreadedSocketPipe)SocketPipeTuning.Wrap(b, "test unix destination", connecting: false);
        var writer = (GatherSocketWriter)source.Output;
        nint region = Allocate(1 << 20);
        try
        {
            Assert.IsTrue(writer.Splices, "the unix source splices");
            new Random(3).NextBytes(At(region, 1 << 20));
            Task<(long Count, ulong Hash)> received = TransportTestKit.ReceiveAllAsync(destination.Input);
            var sent = new Fnv1a();
            long total = WriteHeader(writer, sent, 10, 0, 0);
            await writer.FlushAsync();
            Assert.AreEqual(0L, writer.SplicedBytes, "a flush without pages goes by sendmsg");
            for (int page = 0; page < 256; page++)
            {
                total += WriteHeader(writer, sent, 9, 1, page);
                writer.WriteByReference(region + (page * 4096), 4096);
                sent.Append(At(region + (page * 4096), 4096));
                total += 4096;
            }

            await writer.FlushAsync();
            Assert.IsTrue(writer.SplicedBytes >= 256 * 4096, $"a flush of pages goes by splice ({writer.SplicedBytes} bytes)");
            writer.Complete();
            Assert.AreEqual((total, sent.Value), await received.WithTimeout(), "what was spliced arrives intact");
        }
        finally
        {
            source.Close();
            destination.Close();
            Free(region);
        }
    }

    /// <summary>
    /// A peer that goes away fails the spliced flush with an error that names the connection and
    /// records the reset; splice(2) raises SIGPIPE then (it has no MSG_NOSIGNAL), which .NET ignores.
    /// </summary>
    [TestMethod]
    public async Task APeerThatGoesAwayFailsASplicedFlushNamingTheConnection()
    {
        (Socket a, Socket b) = await TransportTestKit.UnixPairAsync();
        SocketError recorded = SocketError.Success;
        var writer = new GatherSocketWriter(a, "unix:/test/peer-gone.sock", error => recorded = error, splice: true);
        nint region = Allocate(1 << 20);
        try
        {
            Assert.IsTrue(writer.Splices, "a unix socket on this kernel splices");
            b.Dispose();
            IOException? failure = null;
            try
            {
                for (int flush = 0; flush < 10; flush++)
                {
                    WriteHeader(writer, new Fnv1a(), 9, flush, 0);
                    writer.WriteByReference(region, 1 << 20);
                    await writer.FlushAsync().AsTask().WithTimeout();
                }
            }
            catch (IOException ex)
            {
                failure = ex;
            }

            Assert.IsNotNull(failure, "sending to a peer that closed fails");
            StringAssert.Contains(failure.Message, "sending on unix:/test/peer-gone.sock failed (splice)", "the error names the connection and the call");
            Assert.AreEqual(SocketError.ConnectionReset, recorded, "the broken pipe is recorded as a reset");
        }
        finally
        {
            a.Dispose();
            Free(region);
        }
    }

    /// <summary>A header of <paramref name="length"/> bytes that says which record it is; returns its length.</summary>
    private static int WriteHeader(GatherSocketWriter writer, Fnv1a sent, int length, int flush, int record)
    {
        Span<byte> header = writer.GetSpan(length)[..length];
        for (int i = 0; i < length; i++)
        {
            header[i] = (byte)((flush * 31) + (record * 17) + i);
        }

        sent.Append(header);
        writer.Advance(length);
        return length;
    }

    /// <summary>Reads to the end; a slow receiver pauses after every 64 KiB.</summary>
    private static (long Count, ulong Hash) ReceiveAll(Socket socket, bool slow)
    {
        var hash = new Fnv1a();
        byte[] buffer = new byte[64 << 10];
        long count = 0;
        while (true)
        {
            int n = socket.Receive(buffer);
            if (n == 0)
            {
                return (count, hash.Value);
            }

            hash.Append(buffer.AsSpan(0, n));
            count += n;
            if (slow)
            {
                Thread.Sleep(1);
            }
        }
    }

    private static unsafe nint Allocate(int size) => (nint)NativeMemory.AlignedAlloc((nuint)size, 4096);

    private static unsafe void Free(nint address) => NativeMemory.AlignedFree((void*)address);

    private static unsafe Span<byte> At(nint address, int length) => new((void*)address, length);


    private static async Task<(Socket, Socket)> TcpPairAsync()
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
