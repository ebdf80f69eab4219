using System.Diagnostics;
using System.Runtime.CompilerServices;
using Modular.Abstractions.Transports;

namespace Modular.Conformance.Transports;

public abstract partial class TransportConformanceTests
{
    /// <summary>
    /// The forward path and the return path carry data at the same time, each in order and intact
    /// (the engine sends RAM while the destination requests pages on the return path).
    /// </summary>
    [TestMethod]
    public async Task BytesArriveInOrderInBothDirectionsAtOnce()
    {
        RequireLivePeer("carrying both directions at once");
        await using ConnectedPair pair = await ConnectPairAsync().ConfigureAwait(false);
        const long forward = 64L << 20, back = 16L << 20;
        Task<long> receiveForward = new StreamPattern(11).ReceiveAsync(pair.Destination.Transport.Input, $"{Name} forward path (both directions at once)", forward);
        Task<long> receiveBack = new StreamPattern(12).ReceiveAsync(pair.Source.Transport.Input, $"{Name} return path (both directions at once)", back);
        Task<long> sendForward = new StreamPattern(11).SendAsync(pair.Source.Transport.Output, forward);
        Task<long> sendBack = new StreamPattern(12).SendAsync(pair.Destination.Transport.Output, back);
        await AllAsync(TransferTimeout, $"{Name}: moving {forward >> 20} MiB forward and {back >> 20} MiB back at once",
            receiveForward, receiveBack, sendForward, sendBack).ConfigureAwait(false);
    }

    /// <summary>At least 1 GiB arrives with every byte equal to what was written, in order.</summary>
    [TestMethod]
    public async Task ALargeTransferArrivesIntact()
    {
        RequireUsable();
        long total = LargeTransferBytes;
        var clock = Stopwatch.StartNew();
        if (StoreAndForwardReason is not null)
        {
            TransportEndpoint endpoint = ListenEndpoint();
            await SendStoreAndForwardAsync(endpoint, total).ConfigureAwait(false);
            await using IMigrationListener listener = await Transport.ListenAsync(endpoint).ConfigureAwait(false);
            await using IMigrationConnection reader = await Step(listener.AcceptAsync().AsTask(), "AcceptAsync").ConfigureAwait(false);
            await new StreamPattern(1).ReceiveAsync(reader.Transport.Input, $"{Name} large transfer", total).WaitAsync(TransferTimeout).ConfigureAwait(false);
        }
        else
        {
            await using ConnectedPair pair = await ConnectPairAsync().ConfigureAwait(false);
            Task<long> receive = new StreamPattern(21).ReceiveAsync(pair.Destination.Transport.Input, $"{Name} large transfer", total);
            Task<long> send = new StreamPattern(21).SendAsync(pair.Source.Transport.Output, total);
            await AllAsync(TransferTimeout, $"{Name}: a {total >> 20} MiB transfer", receive, send).ConfigureAwait(false);
        }

        Console.WriteLine($"{Name}: {total >> 20} MiB arrived intact in {clock.Elapsed.TotalSeconds:F1} s ({total / clock.Elapsed.TotalSeconds / 1e6:F0} MB/s, checked byte by byte).");
    }

    /// <summary>
    /// A reader that takes 64 KiB every 10 ms must slow the writer down: the bytes written but not yet
    /// read stay under <see cref="BackpressureLimitBytes"/>, so a slow destination cannot make the
    /// source's memory grow without bound. The heap and RSS growth are reported with any failure.
    /// </summary>
    [TestMethod]
    public async Task ASlowReaderHoldsTheWriterBack()
    {
        RequireLivePeer("backpressure from a slow reader");
        await using ConnectedPair pair = await ConnectPairAsync().ConfigureAwait(false);
        long limit = BackpressureLimitBytes;
        var written = new StrongBox<long>();
        var read = new StrongBox<long>();
        bool stopWriting = false, slow = true;
        long heapBefore = GC.GetTotalMemory(forceFullCollection: true);
        long rssBefore = Environment.WorkingSet;

        // The writer gives up at four times the limit, so a transport without backpressure fails the
        // test without exhausting the machine's memory.
        Task<long> send = Task.Run(() => new StreamPattern(31).SendAsync(pair.Source.Transport.Output, limit * 4, written, () => Volatile.Read(ref stopWriting)));
        Task<long> receive = Task.Run(() => new StreamPattern(31).ReceiveAsync(pair.Destination.Transport.Input, $"{Name} slow reader", null, read,
            async () => { if (Volatile.Read(ref slow)) { await Task.Delay(10).ConfigureAwait(false); } }, maxPerRead: 64 * 1024));

        long worstAhead = 0, heapPeak = 0, rssPeak = 0;
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < TimeSpan.FromSeconds(3) && !send.IsCompleted && !receive.IsCompleted)
        {
            await Task.Delay(50).ConfigureAwait(false);
            worstAhead = Math.Max(worstAhead, Volatile.Read(ref written.Value) - Volatile.Read(ref read.Value));
            heapPeak = Math.Max(heapPeak, GC.GetTotalMemory(false));
            rssPeak = Math.Max(rssPeak, Environment.WorkingSet);
        }

        if (receive.IsFaulted)
        {
            await receive.ConfigureAwait(false);
        }

        Volatile.Write(ref stopWriting, true);
        Volatile.Write(ref slow, false);
        await send.WaitAsync(TransferTimeout).ConfigureAwait(false);
        worstAhead = Math.Max(worstAhead, Volatile.Read(ref written.Value) - Volatile.Read(ref read.Value));
        await pair.Source.Transport.Output.CompleteAsync().ConfigureAwait(false);
        long total = await receive.WaitAsync(TransferTimeout).ConfigureAwait(false);
        Expect.Equal(await send.ConfigureAwait(false), total, $"{Name}: the slow reader did not get every byte written.");

        Expect.That(worstAhead <= limit,
            $"{Name}: a reader taking 64 KiB every 10 ms fell {worstAhead >> 20} MiB behind the writer (limit {limit >> 20} MiB); meanwhile the managed heap " +
            $"grew by {Math.Max(0, heapPeak - heapBefore) >> 20} MiB and RSS by {Math.Max(0, rssPeak - rssBefore) >> 20} MiB. FlushAsync must wait while the peer " +
            "does not keep up (backpressure: bound what the connection buffers, e.g. with PipeOptions.PauseWriterThreshold); otherwise a slow destination " +
            "makes the source's memory grow without bound.");
        Console.WriteLine($"{Name}: a stalled-ish reader let the writer get at most {worstAhead / 1024} KiB ahead (limit {limit >> 20} MiB).");
    }
}
