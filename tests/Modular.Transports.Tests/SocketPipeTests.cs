extern alias tcp;

using System.IO.Pipelines;
using Modular.Abstractions.Transports;
using System.Net;
using System.Net.Sockets;
using Pipelines.Sockets.Unofficial;
using ISocketPipe = tcp::Modular.Transports.Shared.ISocketPipe;
using PipelinesSocketPipe = tcp::Modular.Transports.Shared.PipelinesSocketPipe;
using SocketPipeTuning = tcp::Modular.Transports.Shared.SocketPipeTuning;
using ThreadedSocketPipe = tcp::Modular.Transports.Shared.ThreadedSocketPipe;

namespace Modular.Transports.Tests;

/// <summary>
/// The ways the tcp and unix transports run a main connection (<see cref="ISocketPipe"/>): the
/// threaded pipes in use (the source sending with a gather writer, tcp, or from a send loop on the
/// pool, unix), and Pipelines.Sockets.Unofficial (kept selectable for comparison). Each
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

    /// <summary>
    /// The source's gather writer blocks a flush while the peer reads nothing; a cancel (what an abort
    /// does) ends that flush as canceled, and closing the pipe under it ends it too, without throwing.
    /// Over unix the flush goes by splice, whose pipe still holds pages then.
    /// </summary>
    [TestMethod]
    [DataRow("cancel", "tcp")]
    [DataRow("close", "tcp")]
    [DataRow("cancel", "unix")]
    [DataRow("close", "unix")]
    public async Task AFlushBlockedOnAFullSocketEndsOnCancelOrClose(string how, string family)
    {
        (Socket a, Socket b) = family == "unix" ? await TransportTestKit.UnixPairAsync() : await ConnectedPairAsync();
        var source = new ThreadedSocketPipe(a, "test source", "test recv", gatherSends: true, spliceSends: family == "unix");
        var gather = (Modular.Abstractions.Transports.IGatherWriter)source.Output;
        const int size = 64 << 20; // far more than both socket buffers: the flush must wait for the reader
        nint region = System.Runtime.InteropServices.Marshal.AllocHGlobal(size);
        try
        {
            gather.WriteByReference(region, size);
            Task<System.IO.Pipelines.FlushResult> flush = source.Output.FlushAsync().AsTask();
            await Task.Delay(300);
            Assert.IsFalse(flush.IsCompleted, "nobody reads: the flush must still be waiting for room");
            if (how == "cancel")
            {
                source.Output.CancelPendingFlush();
                Assert.IsTrue((await flush.WithTimeout()).IsCanceled, "a canceled flush says so");
            }
            else
            {
                source.Close();
                Exception? failure = await Record(flush.WithTimeout());
                Assert.IsTrue(failure is null ? flush.Result.IsCanceled : failure is IOException, $"a flush under a close ends canceled or with an IOException, not {failure}");
                Assert.ThrowsExactly<InvalidOperationException>(() => source.Output.GetMemory(1), "writing after the close is refused");
            }
        }
        finally
        {
            source.Close();
            b.Dispose();
            System.Runtime.InteropServices.Marshal.FreeHGlobal(region);
        }

        static async Task<Exception?> Record(Task task)
        {
            try
            {
                await task;
                return null;
            }
            catch (Exception ex)
            {
                return ex;
            }
        }
    }

    /// <summary>
    /// The threaded pipe clears O_NONBLOCK, which the async connect left on the descriptor: its
    /// receive thread then waits in recv(2) itself rather than for .NET's epoll thread (one wake-up
    /// per arrival instead of two). Closing still ends a receive blocked in the kernel.
    /// </summary>
    [TestMethod]
    public async Task TheThreadedPipeReceivesBlockingAndClosingEndsABlockedReceive()
    {
        (Socket a, Socket b) = await ConnectedPairAsync();
        Assert.IsTrue(IsNonBlocking(a), "precondition: the async connect left the descriptor non-blocking");
        var source = new ThreadedSocketPipe(a, "test source", "test recv", gatherSends: true);
        var destination = new ThreadedSocketPipe(b, "test destination", "test recv", latencyReceive: false);
        try
        {
            Assert.IsFalse(IsNonBlocking(a), "the source's descriptor blocks");
            Assert.IsFalse(IsNonBlocking(b), "the destination's descriptor blocks");
            await Task.Delay(100); // both receive threads are now inside recv(2), nothing having arrived
            // .NET's close waits until no call holds the socket, so it returns only once the
            // blocked recv(2) has ended: a close that hung here would time out.
            await Task.Run(destination.Close).WithTimeout();
            Assert.IsTrue(destination.Socket.SafeHandle.IsClosed, "the destination's socket is closed");
            (long bytes, _) = await TransportTestKit.ReceiveAllAsync(source.Input).WithTimeout();
            Assert.AreEqual(0L, bytes, "the source's blocked receive sees the end of the stream");
        }
        finally
        {
            source.Close();
            destination.Close();
        }
    }

    /// <summary>
    /// A latency receive thread (the source's return path) waits for data in poll(2), so bulk data
    /// sent the other way on the same socket does not wake it: on a unix socket a thread blocked in
    /// recv(2) is woken by every write-space wake-up of the socket (the peer reading frees room),
    /// hundreds of times for this transfer, each a switch to a nice -20 thread. It must still get
    /// what arrives, and end when closed.
    /// </summary>
    [TestMethod]
    [DataRow("unix")]
    [DataRow("tcp")]
    public async Task ALatencyReceiveThreadSleepsThroughBulkSentTheOtherWay(string family)
    {
        (Socket a, Socket b) = family == "unix" ? await TransportTestKit.UnixPairAsync() : await ConnectedPairAsync();
        var source = new ThreadedSocketPipe(a, "test source", "wake test recv", gatherSends: true, spliceSends: family == "unix"); // unix: its descriptor is non-blocking then
        var destination = new ThreadedSocketPipe(b, "test destination", "test recv", latencyReceive: false);
        try
        {
            await Task.Delay(100); // the source's receive thread is now waiting
            string task = FindThread("wake test recv");
            long before = VoluntarySwitches(task);
            const long bulk = 512L << 20;
            Task<ulong> send = TransportTestKit.SendAsync(source.Output, bulk);
            (long received, ulong sum) = await TransportTestKit.ReceiveAllAsync(destination.Input).WithTimeout();
            Assert.AreEqual((bulk, await send.WithTimeout()), (received, sum), "the bulk data arrived intact");
            long woken = VoluntarySwitches(task) - before;
            Assert.IsTrue(woken < 20, $"{family}: the waiting receive thread was woken {woken} times by data sent the other way (a recv(2) wait is woken for each freed buffer)");

            Task<ulong> back = TransportTestKit.SendAsync(destination.Output, 1 << 20);
            Assert.AreEqual((1L << 20, await back.WithTimeout()), await TransportTestKit.ReceiveAllAsync(source.Input).WithTimeout(), "what does come the other way still arrives");
        }
        finally
        {
            source.Close();
            destination.Close();
        }

        static long VoluntarySwitches(string task) => long.Parse(File.ReadAllLines(Path.Combine(task, "status"))
            .Single(line => line.StartsWith("voluntary_ctxt_switches:", StringComparison.Ordinal))
            .Split(':')[1].Trim(), System.Globalization.CultureInfo.InvariantCulture);
    }

    /// <summary>
    /// Direct receives (<c>IDirectReceive</c> on the main connection): the reader, running inline on
    /// the receive thread inside a read, takes the stream's next bytes straight into native memory,
    /// and hands some back, which the pipe delivers before anything received later. Over a real unix
    /// socket, whatever the mix, the reader ends up with exactly the bytes sent, in order; and no
    /// other thread may receive directly.
    /// </summary>
    [TestMethod]
    public async Task DirectReceivesAndBytesHandedBackKeepTheStreamInOrder()
    {
        (Socket a, Socket b) = await TransportTestKit.UnixPairAsync();
        var destination = new ThreadedSocketPipe(b, "test destination", "test recv", latencyReceive: false);
        const int total = 16 << 20;
        byte[] sent = new byte[total];
        new Random(7).NextBytes(sent);
        nint native = System.Runtime.InteropServices.Marshal.AllocHGlobal(256 * 1024);
        try
        {
            Task sending = Task.Run(() =>
            {
                for (int at = 0; at < total;)
                {
                    at += a.Send(sent, at, Math.Min(total - at, 100_000), SocketFlags.None);
                }

                a.Shutdown(SocketShutdown.Send);
            });
            Assert.IsFalse(await Task.Run(() => destination.CanReceiveDirect), "a thread other than the receive thread may not receive directly");

            var received = new MemoryStream();
            long direct = 0, givenBack = 0;
            var random = new Random(9);
            PipeReader input = destination.Input;
            while (true)
            {
                ReadResult read = await input.ReadAsync().ConfigureAwait(false); // continues on the receive thread
                foreach (ReadOnlyMemory<byte> segment in read.Buffer)
                {
                    received.Write(segment.Span);
                }

                input.AdvanceTo(read.Buffer.End);
                if (read.IsCompleted)
                {
                    break;
                }

                if (destination.CanReceiveDirect)
                {
                    int first = random.Next(1, 9), second = random.Next(1, 200_000);
                    var segments = new[] { new RawSegment(native, first), new RawSegment(native + first, second) };
                    int count = destination.ReceiveDirect(segments);
                    if (count > 0)
                    {
                        int keep = random.Next(0, count + 1);
                        unsafe
                        {
                            received.Write(new ReadOnlySpan<byte>((void*)native, keep));
                            destination.GiveBack(new ReadOnlySpan<byte>((void*)(native + keep), count - keep));
                        }

                        direct += keep;
                        givenBack += count - keep;
                        Assert.AreEqual(count - keep > 0, !destination.CanReceiveDirect, "after bytes are handed back, no direct receive until they are delivered");
                    }
                }
            }

            await sending.WithTimeout();
            Assert.AreEqual(total, received.Length, "every byte arrived once");
            Assert.IsTrue(sent.AsSpan().SequenceEqual(received.GetBuffer().AsSpan(0, total)), "in the order sent");
            Assert.IsGreaterThan(0L, direct, "some bytes were received directly");
            Assert.IsGreaterThan(0L, givenBack, "some were handed back");
        }
        finally
        {
            System.Runtime.InteropServices.Marshal.FreeHGlobal(native);
            destination.Close();
            a.Dispose();
        }
    }


    /// <summary>
    /// A latency receive thread waiting in poll(2) goes on waiting when a signal interrupts it
    /// (EINTR), even on a non-blocking descriptor (a splicing writer makes the source's one so): a
    /// receive after an interrupted wait would find nothing and fail the return path.
    /// </summary>
    [TestMethod]
    [System.Runtime.Versioning.SupportedOSPlatform("linux")]
    public async Task ASignalDuringTheWaitForDataDoesNotFailTheReceive()
    {
        // A socketpair(2) that .NET never used asynchronously: its blocking Receive is then a plain
        // recv(2), which on a non-blocking descriptor fails at once when nothing is there.
        int[] fds = new int[2];
        Assert.AreEqual(0, SocketPair(1 /* AF_UNIX */, 1 /* SOCK_STREAM */, 0, fds), "socketpair");
        var a = new Socket(new SafeSocketHandle(fds[0], ownsHandle: true));
        var b = new Socket(new SafeSocketHandle(fds[1], ownsHandle: true));
        using var handler = System.Runtime.InteropServices.PosixSignalRegistration.Create(System.Runtime.InteropServices.PosixSignal.SIGWINCH, context => context.Cancel = true);
        var source = new ThreadedSocketPipe(a, "test source", "eintr test recv");
        try
        {
            await Task.Delay(100);
            const int FSetFl = 4, FGetFl = 3, ONonBlock = 0x800;
            Assert.AreEqual(0, Fcntl((int)a.Handle, FSetFl, Fcntl((int)a.Handle, FGetFl, 0) | ONonBlock), "fcntl(F_SETFL, O_NONBLOCK)");
            int tid = int.Parse(Path.GetFileName(FindThread("eintr test recv")), System.Globalization.CultureInfo.InvariantCulture);
            for (int i = 0; i < 20; i++)
            {
                if (TgKill(Environment.ProcessId, tid, 28 /* SIGWINCH */) != 0)
                {
                    break; // the receive thread has ended: the read below says why
                }

                await Task.Delay(5);
            }

            Task<ulong> sending = TransportTestKit.SendAsync(new ThreadedSocketPipe(b, "test destination", "test recv", latencyReceive: false).Output, 1 << 20);
            Assert.AreEqual((1L << 20, await sending.WithTimeout()), await TransportTestKit.ReceiveAllAsync(source.Input).WithTimeout(), "the data after the signals arrives, and the receive did not fail");
        }
        finally
        {
            source.Close();
            b.Dispose();
        }
    }

    [TestMethod]
    public async Task ALatencyReceiveThreadRunsRealTime_ABulkOneStaysFair()
    {
        if (Modular.Abstractions.Threading.LatencyThreads.Policy != Modular.Abstractions.Threading.LatencyThreadPolicy.RealTime)
        {
            Assert.Fail("the process-wide default is realtime");
        }

        (Socket a, Socket b) = await TransportTestKit.UnixPairAsync();
        var latency = new ThreadedSocketPipe(a, "test source", "rt test recv");
        var bulk = new ThreadedSocketPipe(b, "test destination", "bulk test recv", latencyReceive: false);
        try
        {
            // The receive threads start and raise themselves: wait for both (a loaded host may take a while).
            for (int i = 0; i < 100 && (TryFindThread("rt test recv") is not { } t || Scheduling(t).Policy == 0 || TryFindThread("bulk test recv") is null); i++)
            {
                await Task.Delay(50);
            }

            (int latencyPolicy, int latencyPriority) = Scheduling(FindThread("rt test recv"));
            (int bulkPolicy, _) = Scheduling(FindThread("bulk test recv"));
            if (latencyPolicy == 0)
            {
                Assert.Inconclusive("this process may not use SCHED_FIFO (no CAP_SYS_NICE or RLIMIT_RTPRIO 0)");
            }

            Assert.AreEqual(1, latencyPolicy, "the latency receive thread runs SCHED_FIFO");
            Assert.AreEqual(1, latencyPriority, "at the lowest real-time priority");
            Assert.AreEqual(0, bulkPolicy, "the bulk receive thread stays SCHED_OTHER: its work would crowd out everything else");
        }
        finally
        {
            latency.Close();
            bulk.Close();
        }
    }

    /// <summary>A thread's scheduling policy and real-time priority, from /proc/self/task/TID/stat (fields 41 and 40).</summary>
    private static (int Policy, int Priority) Scheduling(string task)
    {
        string stat = File.ReadAllText(Path.Combine(task, "stat"));
        string[] fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        // fields[0] is field 3 (state): field N is fields[N - 3].
        return (int.Parse(fields[41 - 3], System.Globalization.CultureInfo.InvariantCulture), int.Parse(fields[40 - 3], System.Globalization.CultureInfo.InvariantCulture));
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "socketpair", SetLastError = true)]
    private static extern int SocketPair(int domain, int type, int protocol, int[] fds);

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "tgkill", SetLastError = true)]
    private static extern int TgKill(int pid, int tid, int signal);

    private static string FindThread(string name) => TryFindThread(name) ?? throw new AssertFailedException($"no thread named '{name}'");

    private static string? TryFindThread(string name)
    {
        foreach (string task in Directory.GetDirectories("/proc/self/task"))
        {
            try
            {
                if (File.ReadAllText(Path.Combine(task, "comm")).TrimEnd('\n') == name)
                {
                    return task;
                }
            }
            catch (IOException)
            {
                // The thread ended while the directory was read.
            }
        }

        return null;
    }

    private static bool IsNonBlocking(Socket socket)
    {
        const int FGetFl = 3, ONonBlock = 0x800;
        int flags = Fcntl((int)socket.Handle, FGetFl, 0);
        Assert.IsTrue(flags >= 0, "fcntl(F_GETFL)");
        return (flags & ONonBlock) != 0;
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "fcntl", SetLastError = true)]
    private static extern int Fcntl(int fd, int command, nint argument);

    private static ISocketPipe Wrap(string kind, Socket socket, bool connecting) => kind.StartsWith("threaded", StringComparison.Ordinal)
        ? connecting
            ? new ThreadedSocketPipe(socket, "test source", "test recv", gatherSends: true)
            : new ThreadedSocketPipe(socket, "test destination", "test recv", latencyReceive: false)
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
