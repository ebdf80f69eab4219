using System.Diagnostics;
using System.Runtime.InteropServices;
using Modular.Abstractions.Transports;
using Modular.Transports.Tcp;
using Modular.Transports.Unix;

namespace Modular.Transports.Tests;

/// <summary>
/// Raw channels (<see cref="IRawChannels"/>) of the tcp and unix transports: blocking calls between
/// native memory on dedicated threads carry scattered pages intact, tell a clean end from an end
/// part-way, and fail promptly when the channel or its connection is aborted.
/// </summary>
public abstract class RawChannelTests
{
    private const int Page = 4096;
    private static readonly TimeSpan Prompt = TimeSpan.FromSeconds(1);

    protected abstract IMigrationTransport Transport { get; }

    protected abstract TransportEndpoint FreshEndpoint();

    /// <summary>Whether an aborted channel reaches the peer as a reset (TCP) rather than an end (unix).</summary>
    protected abstract bool PeerSeesReset { get; }

    [TestMethod]
    public async Task Carries4MiBOfScatteredPagesIntactAndEndsCleanly()
    {
        // Declared first, freed last: after the connections (and their channels) are closed.
        using var sent = new NativeBuffer(8 << 20);
        using var received = new NativeBuffer(8 << 20);
        await using Pair pair = await ConnectAsync();
        (IRawChannel source, IRawChannel destination) = await OpenRawAsync(pair, 1);
        StringAssert.EndsWith(source.Description, " (raw channel 1)");
        StringAssert.EndsWith(destination.Description, " (raw channel 1)");

        new Random(42).NextBytes(sent.Span);
        received.Span.Fill(0xEE);

        // 1024 pages of 4 KiB sent, 2048 pieces of 2 KiB received (more than IOV_MAX in one call).
        RawSegment[] sendSegments = sent.EveryOther(Page);
        RawSegment[] receiveSegments = received.EveryOther(Page / 2);
        Task sending = OnThread(() => source.Send(sendSegments));
        Task<bool> receiving = OnThread(() => destination.Receive(receiveSegments));
        await sending.WithTimeout();
        Assert.IsTrue(await receiving.WithTimeout(), "every byte arrived");
        CollectionAssert.AreEqual(Gather(sent, sendSegments), Gather(received, receiveSegments), "the bytes arrive exactly as sent, in order");
        Assert.IsTrue(received.Span.Slice(Page / 2, Page / 2).IndexOfAnyExcept((byte)0xEE) < 0, "nothing is written between the segments");

        source.CompleteSend();
        Assert.IsFalse(await OnThread(() => destination.Receive([new RawSegment(received.Address, Page)])).WithTimeout(),
            "after CompleteSend the next receive is a clean end");
    }

    [TestMethod]
    public async Task ThePeerEndingPartWayIsAnEndOfStream()
    {
        using var buffer = new NativeBuffer(2 * Page);
        await using Pair pair = await ConnectAsync();
        (IRawChannel source, IRawChannel destination) = await OpenRawAsync(pair, 1);

        source.Send([new RawSegment(buffer.Address, 1000)]);
        source.CompleteSend();
        var ex = await Assert.ThrowsExactlyAsync<EndOfStreamException>(() =>
            OnThread(() => destination.Receive([new RawSegment(buffer.Address, Page), new RawSegment(buffer.Address + Page, Page)])).WithTimeout());
        StringAssert.Contains(ex.Message, destination.Description);
        StringAssert.Contains(ex.Message, "1000 of 8192 bytes");
    }

    [TestMethod]
    public async Task AbortFromAnotherThreadEndsABlockedReceiveAtOnce()
    {
        using var buffer = new NativeBuffer(Page);
        await using Pair pair = await ConnectAsync();
        (IRawChannel source, IRawChannel destination) = await OpenRawAsync(pair, 1);

        Task<bool> blocked = OnThread(() => destination.Receive([new RawSegment(buffer.Address, Page)]));
        await Task.Delay(200);
        Assert.IsFalse(blocked.IsCompleted, $"nothing was sent: the receive must block, but it {Outcome(blocked)}");
        var clock = Stopwatch.StartNew();
        destination.Abort();
        var ex = await Assert.ThrowsExactlyAsync<IOException>(() => blocked.WaitAsync(Prompt));
        Assert.IsTrue(clock.Elapsed < Prompt, $"took {clock.Elapsed}");
        Assert.AreEqual($"{destination.Description} was aborted.", ex.Message);

        destination.Abort(); // harmless twice
        Assert.AreEqual($"{destination.Description} was aborted.",
            Assert.ThrowsExactly<IOException>(() => destination.Send([new RawSegment(buffer.Address, 1)])).Message, "later calls fail too");

        Task<bool> peer = OnThread(() => source.Receive([new RawSegment(buffer.Address, Page)]));
        if (PeerSeesReset)
        {
            var reset = await Assert.ThrowsExactlyAsync<IOException>(() => peer.WithTimeout());
            StringAssert.StartsWith(reset.Message, $"Receiving on {source.Description} failed: the peer closed or reset the channel");
        }
        else
        {
            Assert.IsFalse(await peer.WithTimeout(), "a unix socket has no reset: the peer sees the end");
        }
    }

    [TestMethod]
    public async Task AbortingTheConnectionEndsABlockedRawReceive()
    {
        using var buffer = new NativeBuffer(Page);
        await using Pair pair = await ConnectAsync();
        (_, IRawChannel destination) = await OpenRawAsync(pair, 1);

        Task<bool> blocked = OnThread(() => destination.Receive([new RawSegment(buffer.Address, Page)]));
        await Task.Delay(200);
        Assert.IsFalse(blocked.IsCompleted, $"nothing was sent: the receive must block, but it {Outcome(blocked)}");
        var clock = Stopwatch.StartNew();
        pair.Destination.Abort(new InvalidOperationException("migrate_cancel"));
        var ex = await Assert.ThrowsExactlyAsync<IOException>(() => blocked.WaitAsync(Prompt));
        Assert.IsTrue(clock.Elapsed < Prompt, $"took {clock.Elapsed}");
        StringAssert.Contains(ex.Message, destination.Description);
        await Assert.ThrowsExactlyAsync<TransportException>(async () => await ((IRawChannels)pair.Destination).OpenRawChannelAsync(2));
    }

    [TestMethod]
    public async Task ChannelZeroIsRefused()
    {
        await using Pair pair = await ConnectAsync();
        var ex = await Assert.ThrowsExactlyAsync<ArgumentOutOfRangeException>(async () => await ((IRawChannels)pair.Source).OpenRawChannelAsync(0));
        Assert.AreEqual("index", ex.ParamName);
    }

    [TestMethod]
    public async Task DisposingTheConnectionClosesItsRawChannels()
    {
        await RoundTrip(); // warm up lazily created runtime handles
        int before = TransportTestKit.OpenFileDescriptors();
        for (int i = 0; i < 3; i++)
        {
            await RoundTrip();
        }

        await Task.Delay(100);
        Assert.AreEqual(before, TransportTestKit.OpenFileDescriptors());

        async Task RoundTrip()
        {
            using var buffer = new NativeBuffer(Page);
            await using Pair pair = await ConnectAsync();
            (IRawChannel source, IRawChannel destination) = await OpenRawAsync(pair, 1);
            source.Send([new RawSegment(buffer.Address, Page)]);
            Assert.IsTrue(destination.Receive([new RawSegment(buffer.Address, Page)]));
        }
    }

    private async Task<Pair> ConnectAsync()
    {
        IMigrationListener listener = await Transport.ListenAsync(FreshEndpoint());
        Task<IMigrationConnection> accepting = listener.AcceptAsync().AsTask();
        IMigrationConnection source = await Transport.ConnectAsync(listener.Endpoint);
        return new Pair(listener, source, await accepting.WithTimeout());
    }

    /// <summary>Opens raw channel <paramref name="index"/> on both ends at once.</summary>
    private static async Task<(IRawChannel Source, IRawChannel Destination)> OpenRawAsync(Pair pair, int index)
    {
        Task<IRawChannel> accepting = ((IRawChannels)pair.Destination).OpenRawChannelAsync(index).AsTask();
        IRawChannel source = await ((IRawChannels)pair.Source).OpenRawChannelAsync(index).AsTask().WithTimeout();
        return (source, await accepting.WithTimeout());
    }

    /// <summary>Runs a blocking call on a thread of its own, as the engine's multifd threads do.</summary>
    private static Task<T> OnThread<T>(Func<T> call) =>
        Task.Factory.StartNew(call, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);

    private static Task OnThread(Action call) =>
        Task.Factory.StartNew(call, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);

    private static string Outcome(Task<bool> call) => call.IsFaulted ? $"threw {call.Exception!.InnerException}" : $"returned {call.Result}";

    private static byte[] Gather(NativeBuffer buffer, RawSegment[] segments)
    {
        using var gathered = new MemoryStream();
        foreach (RawSegment segment in segments)
        {
            gathered.Write(buffer.Span.Slice((int)(segment.Address - buffer.Address), segment.Length));
        }

        return gathered.ToArray();
    }

    private sealed record Pair(IMigrationListener Listener, IMigrationConnection Source, IMigrationConnection Destination) : IAsyncDisposable
    {
        public async ValueTask DisposeAsync()
        {
            await Source.DisposeAsync();
            await Destination.DisposeAsync();
            await Listener.DisposeAsync();
        }
    }

    /// <summary>Native memory for a test; freed on dispose (after every call using it has returned).</summary>
    private sealed unsafe class NativeBuffer(int length) : IDisposable
    {
        public nint Address { get; } = (nint)NativeMemory.Alloc((nuint)length);

        public Span<byte> Span => new((void*)Address, length);

        /// <summary>Every other piece of <paramref name="size"/> bytes: half the buffer, scattered.</summary>
        public RawSegment[] EveryOther(int size) =>
            [.. Enumerable.Range(0, length / size / 2).Select(i => new RawSegment(Address + (2 * i * size), size))];

        public void Dispose() => NativeMemory.Free((void*)Address);
    }
}

[TestClass]
public sealed class TcpRawChannelTests : RawChannelTests
{
    protected override IMigrationTransport Transport { get; } = new TcpTransport();

    protected override TransportEndpoint FreshEndpoint() => TransportEndpoint.Parse("tcp:127.0.0.1:0");

    protected override bool PeerSeesReset => true;
}

[TestClass]
public sealed class UnixRawChannelTests : RawChannelTests
{
    private readonly string _dir = Directory.CreateTempSubdirectory("modular-unix-raw-").FullName;
    private int _next;

    protected override IMigrationTransport Transport { get; } = new UnixTransport();

    protected override TransportEndpoint FreshEndpoint() => new("unix", Path.Combine(_dir, $"raw{_next++}.sock"));

    protected override bool PeerSeesReset => false;

    [TestCleanup]
    public void Cleanup() => Directory.Delete(_dir, recursive: true);
}
