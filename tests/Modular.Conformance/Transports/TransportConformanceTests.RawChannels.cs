using System.Runtime.InteropServices;
using Modular.Abstractions.Transports;

namespace Modular.Conformance.Transports;

public abstract partial class TransportConformanceTests
{
    /// <summary>
    /// When the connection offers <see cref="IRawChannels"/> (on both ends), raw channel 1 opens on
    /// both ends and carries 2 MiB each way at once, with blocking calls on threads of their own: sent
    /// from every other 4 KiB page of native memory, in calls of 128 pages, and received into every
    /// other 1 KiB piece of another buffer in one call (more segments than IOV_MAX), intact and in
    /// order. <see cref="IRawChannel.CompleteSend"/> then reaches the peer as a clean end: its next
    /// <see cref="IRawChannel.Receive"/> returns false.
    /// </summary>
    [TestMethod]
    public async Task RawChannelsCarryPagesBothWays()
    {
        RequireLivePeer("raw channels");
        await using ConnectedPair pair = await ConnectPairAsync().ConfigureAwait(false);
        IRawChannels source = RequireOnBothEnds<IRawChannels>(pair);
        var destination = (IRawChannels)pair.Destination;

        Task<IRawChannel> accepting = destination.OpenRawChannelAsync(1).AsTask();
        using IRawChannel sourceChannel = await Step(source.OpenRawChannelAsync(1).AsTask(), "OpenRawChannelAsync(1) on the connecting end").ConfigureAwait(false);
        using IRawChannel destinationChannel = await Step(accepting, "OpenRawChannelAsync(1) on the accepted end").ConfigureAwait(false);
        Expect.That(!string.IsNullOrWhiteSpace(sourceChannel.Description) && !string.IsNullOrWhiteSpace(destinationChannel.Description),
            $"{Name}: a raw channel's Description is empty; it names the peer and the channel in errors.");

        const int size = 2 << 20, page = 4096, piece = 1024, pagesPerSend = 128;
        var forward = new StreamPattern(101);
        var back = new StreamPattern(102);
        using var memory = new RawTestMemory(4, 2 * size);
        RawSegment[] forwardSent = memory.EveryOther(0, page), backSent = memory.EveryOther(2, page);
        RawSegment[] forwardReceived = memory.EveryOther(1, piece), backReceived = memory.EveryOther(3, piece);
        memory.FillLogically(forwardSent, forward);
        memory.FillLogically(backSent, back);

        bool forwardComplete = false, backComplete = false;
        Task[] calls =
        [
            memory.Run(() => SendInCalls(sourceChannel, forwardSent, pagesPerSend)),
            memory.Run(() => SendInCalls(destinationChannel, backSent, pagesPerSend)),
            memory.Run(() => forwardComplete = destinationChannel.Receive(forwardReceived)),
            memory.Run(() => backComplete = sourceChannel.Receive(backReceived)),
        ];
        try
        {
            await AllAsync(TransferTimeout, $"{Name}: 2 MiB each way on raw channel 1", calls).ConfigureAwait(false);
            Expect.That(forwardComplete && backComplete,
                $"{Name}: IRawChannel.Receive returned false (a clean end before the first byte) while the peer was sending 2 MiB on raw channel 1.");
            memory.CheckLogically(forwardReceived, forward, $"{Name} raw channel 1 forward");
            memory.CheckLogically(backReceived, back, $"{Name} raw channel 1 back");

            sourceChannel.CompleteSend();
            destinationChannel.CompleteSend();
            RawSegment[] one = [forwardReceived[0]];
            Task<bool> sourceEnd = memory.Run(() => sourceChannel.Receive(one));
            Task<bool> destinationEnd = memory.Run(() => destinationChannel.Receive(one));
            Expect.That(!await Step(destinationEnd, "IRawChannel.Receive on the accepted end after the peer's CompleteSend").ConfigureAwait(false),
                $"{Name}: after the connecting end's IRawChannel.CompleteSend, the accepted end's next Receive must return false (a clean end).");
            Expect.That(!await Step(sourceEnd, "IRawChannel.Receive on the connecting end after the peer's CompleteSend").ConfigureAwait(false),
                $"{Name}: after the accepted end's IRawChannel.CompleteSend, the connecting end's next Receive must return false (a clean end).");
        }
        finally
        {
            // A call still blocked must end before its memory is freed.
            sourceChannel.Abort();
            destinationChannel.Abort();
            await pair.DisposeAsync().ConfigureAwait(false);
        }
    }

    private static void SendInCalls(IRawChannel channel, RawSegment[] segments, int perCall)
    {
        for (int first = 0; first < segments.Length; first += perCall)
        {
            channel.Send(segments.AsSpan(first, Math.Min(perCall, segments.Length - first)));
        }
    }

    /// <summary>
    /// Native buffers for raw channel tests, and the threads whose blocking calls use them: freed on
    /// dispose only when every call has returned (a transport whose abort leaves a call blocked leaks
    /// them rather than have the call write into freed memory).
    /// </summary>
    private sealed class RawTestMemory : IDisposable
    {
        private readonly nint[] _buffers;
        private readonly int _length;
        private readonly List<Task> _calls = [];

        public RawTestMemory(int count, int length)
        {
            _length = length;
            _buffers = new nint[count];
            for (int i = 0; i < count; i++)
            {
                _buffers[i] = Marshal.AllocHGlobal(length);
                unsafe
                {
                    new Span<byte>((void*)_buffers[i], length).Fill(0xEE);
                }
            }
        }

        /// <summary>Every other piece of <paramref name="size"/> bytes of buffer <paramref name="buffer"/>: half of it, scattered.</summary>
        public RawSegment[] EveryOther(int buffer, int size) =>
            [.. Enumerable.Range(0, _length / size / 2).Select(i => new RawSegment(_buffers[buffer] + (2 * i * size), size))];

        /// <summary>Fills the segments with the pattern's stream, as if they were one run of bytes.</summary>
        public void FillLogically(RawSegment[] segments, StreamPattern pattern)
        {
            long offset = 0;
            foreach (RawSegment segment in segments)
            {
                pattern.Fill(offset, Span(segment));
                offset += segment.Length;
            }
        }

        /// <summary>Fails at the first byte of the segments, read as one run, that is not the pattern's.</summary>
        public void CheckLogically(RawSegment[] segments, StreamPattern pattern, string what)
        {
            long offset = 0;
            byte[] expected = new byte[segments.Max(s => s.Length)];
            foreach (RawSegment segment in segments)
            {
                Span<byte> want = expected.AsSpan(0, segment.Length);
                pattern.Fill(offset, want);
                ReadOnlySpan<byte> got = Span(segment);
                int same = got.CommonPrefixLength(want);
                if (same != segment.Length)
                {
                    throw new AssertFailedException(
                        $"{what}: byte {offset + same} is 0x{got[same]:x2}, expected 0x{want[same]:x2}: the transport corrupted, lost or reordered " +
                        "the bytes (a raw channel must carry them exactly as sent, in order, into the receiver's segments in turn).");
                }

                offset += segment.Length;
            }
        }

        /// <summary>Runs a blocking call on a thread of its own.</summary>
        public Task Run(Action call) => Track(Task.Factory.StartNew(call, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default));

        /// <inheritdoc cref="Run(Action)"/>
        public Task<T> Run<T>(Func<T> call) => Track(Task.Factory.StartNew(call, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default));

        public void Dispose()
        {
            if (!Task.WaitAll([.. _calls.Select(c => c.ContinueWith(static _ => { }, TaskScheduler.Default))], TimeSpan.FromSeconds(10)))
            {
                return; // still blocked after the abort: leak the memory
            }

            foreach (nint buffer in _buffers)
            {
                Marshal.FreeHGlobal(buffer);
            }
        }

        private T Track<T>(T call) where T : Task
        {
            lock (_calls)
            {
                _calls.Add(call);
            }

            return call;
        }

        private static unsafe Span<byte> Span(RawSegment segment) => new((void*)segment.Address, segment.Length);
    }
}
