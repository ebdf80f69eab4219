using System.Buffers;
using System.Buffers.Binary;
using System.IO.Pipelines;
using System.Runtime.InteropServices;
using Modular.Abstractions.Transports;

namespace Modular.Conformance.Transports;

public abstract partial class TransportConformanceTests
{
    /// <summary>
    /// When the transport offers <see cref="Modular.Abstractions.Plugins.IWarmUpPlugin"/>: warming up
    /// returns soon, may be called again, and connections made afterwards (with an extra channel
    /// where offered, the threads a warm-up typically prepares) carry data both ways, intact.
    /// </summary>
    [TestMethod]
    public async Task AfterAWarmUpConnectionsCarryDataAsBefore()
    {
        RequireLivePeer("a warm-up");
        if (Transport is not Modular.Abstractions.Plugins.IWarmUpPlugin warmUp)
        {
            Assert.Inconclusive($"{Name} does not offer IWarmUpPlugin (optional).");
            return;
        }

        var clock = System.Diagnostics.Stopwatch.StartNew();
        warmUp.WarmUp();
        warmUp.WarmUp();
        Expect.That(clock.Elapsed < StepTimeout, $"{Name}: IWarmUpPlugin.WarmUp took {clock.Elapsed.TotalSeconds:F1} s; it must return soon and do long work in the background.");
        await Task.Delay(200).ConfigureAwait(false); // let background work (threads starting) run

        for (int round = 0; round < 3; round++)
        {
            await using ConnectedPair pair = await ConnectPairAsync().ConfigureAwait(false);
            const long size = 4L << 20;
            var transfers = new List<Task>();
            if (pair.Source is IExtraChannels source && pair.Destination is IExtraChannels destination)
            {
                // Opened before anything flows, as the engine does (a finished send ends the connection).
                Task<IDuplexPipe> accepting = destination.OpenChannelAsync(1).AsTask();
                IDuplexPipe sourceChannel = await Step(source.OpenChannelAsync(1).AsTask(), "OpenChannelAsync(1) after a warm-up").ConfigureAwait(false);
                IDuplexPipe destinationChannel = await Step(accepting, "OpenChannelAsync(1) on the accepted end after a warm-up").ConfigureAwait(false);
                transfers.Add(new StreamPattern(91 + round).ReceiveAsync(destinationChannel.Input, $"{Name} channel 1 after a warm-up (round {round})", size));
                transfers.Add(new StreamPattern(91 + round).SendAsync(sourceChannel.Output, size));
            }

            transfers.Add(new StreamPattern(71 + round).ReceiveAsync(pair.Destination.Transport.Input, $"{Name} forward after a warm-up (round {round})", size));
            transfers.Add(new StreamPattern(81 + round).ReceiveAsync(pair.Source.Transport.Input, $"{Name} back after a warm-up (round {round})", size));
            transfers.Add(new StreamPattern(71 + round).SendAsync(pair.Source.Transport.Output, size));
            transfers.Add(new StreamPattern(81 + round).SendAsync(pair.Destination.Transport.Output, size));
            await AllAsync(TransferTimeout, $"{Name}: transfers after a warm-up, round {round}", [.. transfers]).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// When the connection offers <see cref="IExtraChannels"/> (on both ends), channel 1 opens on both
    /// ends and carries data both ways, intact, while the main connection carries its own.
    /// </summary>
    [TestMethod]
    public async Task ExtraChannelsCarryTheirOwnStreams()
    {
        RequireLivePeer("extra channels");
        await using ConnectedPair pair = await ConnectPairAsync().ConfigureAwait(false);
        IExtraChannels source = RequireOnBothEnds<IExtraChannels>(pair);
        var destination = (IExtraChannels)pair.Destination;

        Task<IDuplexPipe> accepting = destination.OpenChannelAsync(1).AsTask();
        IDuplexPipe sourceChannel = await Step(source.OpenChannelAsync(1).AsTask(), "OpenChannelAsync(1) on the connecting end").ConfigureAwait(false);
        IDuplexPipe destinationChannel = await Step(accepting, "OpenChannelAsync(1) on the accepted end").ConfigureAwait(false);

        const long size = 16L << 20;
        await AllAsync(TransferTimeout, $"{Name}: 16 MiB on the main connection and on channel 1",
            new StreamPattern(51).ReceiveAsync(pair.Destination.Transport.Input, $"{Name} main connection (beside channel 1)", size),
            new StreamPattern(52).ReceiveAsync(destinationChannel.Input, $"{Name} channel 1 forward", size),
            new StreamPattern(53).ReceiveAsync(sourceChannel.Input, $"{Name} channel 1 back", size),
            new StreamPattern(51).SendAsync(pair.Source.Transport.Output, size),
            new StreamPattern(52).SendAsync(sourceChannel.Output, size),
            new StreamPattern(53).SendAsync(destinationChannel.Output, size));
    }

    /// <summary>
    /// When the connection offers <see cref="IPageChannel"/> (on both ends), the destination reads the
    /// source's exposed memory by offset and gets exactly the bytes there.
    /// </summary>
    [TestMethod]
    public async Task PageChannelReadsTheExposedMemory()
    {
        RequireLivePeer("a page channel");
        await using ConnectedPair pair = await ConnectPairAsync().ConfigureAwait(false);
        IPageChannel source = RequireOnBothEnds<IPageChannel>(pair);
        var destination = (IPageChannel)pair.Destination;

        const int length = 1 << 20;
        byte[] contents = new byte[length];
        new StreamPattern(61).Fill(0, contents);
        nint region = Marshal.AllocHGlobal(length);
        try
        {
            Marshal.Copy(contents, 0, region, length);
            ReadOnlyMemory<byte> descriptor = source.ExposeRegion("pc.ram", region, length);

            // The descriptor travels on the forward path, as the engine sends it.
            byte[] framed = new byte[4 + descriptor.Length];
            BinaryPrimitives.WriteInt32BigEndian(framed, descriptor.Length);
            descriptor.Span.CopyTo(framed.AsSpan(4));
            await pair.Source.Transport.Output.WriteAsync(framed).ConfigureAwait(false);
            byte[] received = await Step(ReadExactlyAsync(pair.Destination.Transport.Input, framed.Length), "receiving the region descriptor").ConfigureAwait(false);
            destination.AttachRegion("pc.ram", received.AsMemory(4));

            foreach (int offset in new[] { 0, 17 * 4096, length - 4096, 123 })
            {
                byte[] page = new byte[4096];
                await Step(destination.ReadAsync("pc.ram", (ulong)offset, page).AsTask(), $"IPageChannel.ReadAsync at offset {offset}").ConfigureAwait(false);
                int wrong = page.AsSpan().CommonPrefixLength(contents.AsSpan(offset, 4096));
                Expect.Equal(4096, wrong,
                    $"{Name}: IPageChannel.ReadAsync(\"pc.ram\", {offset}) returned a wrong byte at +{wrong}; it must return exactly the source's bytes at that offset.");
            }
        }
        finally
        {
            await pair.DisposeAsync().ConfigureAwait(false);
            Marshal.FreeHGlobal(region);
        }
    }

    /// <summary>
    /// When the forward path's writer is an <see cref="IGatherWriter"/>, bytes written by reference
    /// arrive in order with the bytes copied around them (more pieces per flush than IOV_MAX), the
    /// copied bytes as they were written even though the writer reuses its buffers after each flush.
    /// The referenced memory is left as it is until everything arrived: a transport may hand the
    /// pages themselves to the kernel (the unix transport splices them), so what arrives is what the
    /// memory holds when the peer reads it (see <see cref="IGatherWriter"/>).
    /// </summary>
    [TestMethod]
    public async Task BytesWrittenByReferenceArriveInOrderWithTheCopiedBytes()
    {
        RequireLivePeer("writing by reference");
        await using ConnectedPair pair = await ConnectPairAsync().ConfigureAwait(false);
        if (pair.Source.Transport.Output is not IGatherWriter gather)
        {
            Assert.Inconclusive($"{Name}: the forward path's writer is not an IGatherWriter, which is optional.");
            return;
        }

        const int total = 16 << 20;
        var pattern = new StreamPattern(71);
        Task<long> receiving = pattern.ReceiveAsync(pair.Destination.Transport.Input, $"{Name} forward path written by reference", total);
        PipeWriter output = pair.Source.Transport.Output;
        int[] copied = [8, 17, 1, 8];
        int[] referenced = [4096, 65536, 4093, 4096, 1];
        nint region = Marshal.AllocHGlobal(total);
        try
        {
            unsafe
            {
                pattern.Fill(0, new Span<byte>((void*)region, total));
            }

            int at = 0, piece = 0;
            while (at < total)
            {
                for (int inFlush = 0; inFlush < 1500 && at < total; inFlush++, piece++)
                {
                    int copy = Math.Min(copied[piece % copied.Length], total - at);
                    pattern.Fill(at, output.GetSpan(copy)[..copy]);
                    output.Advance(copy);
                    at += copy;
                    int reference = Math.Min(referenced[piece % referenced.Length], total - at);
                    if (reference > 0)
                    {
                        gather.WriteByReference(region + at, reference);
                        at += reference;
                    }
                }

                FlushResult flushed = await Step(output.FlushAsync().AsTask(), "FlushAsync after writes by reference").ConfigureAwait(false);
                Expect.That(!flushed.IsCanceled && !flushed.IsCompleted, $"{Name}: a flush with a live reader must neither be canceled nor completed.");
            }

            await output.CompleteAsync().ConfigureAwait(false);
            Expect.Equal((long)total, await Step(receiving, "receiving what was written by reference").ConfigureAwait(false),
                $"{Name}: the destination must receive every byte written by reference, in order.");
        }
        finally
        {
            await pair.DisposeAsync().ConfigureAwait(false);
            Marshal.FreeHGlobal(region);
        }
    }

    private T RequireOnBothEnds<T>(ConnectedPair pair) where T : class
    {
        bool onSource = pair.Source is T, onDestination = pair.Destination is T;
        if (!onSource && !onDestination)
        {
            Assert.Inconclusive($"{Name} does not offer {typeof(T).Name}, which is optional.");
        }

        Expect.That(onSource && onDestination,
            $"{Name}: only the {(onSource ? "connecting" : "accepted")} end implements {typeof(T).Name}; a capability must be offered on both ends of a connection.");
        return (T)(object)pair.Source;
    }

    private static async Task<byte[]> ReadExactlyAsync(PipeReader input, int count)
    {
        while (true)
        {
            ReadResult result = await input.ReadAsync().ConfigureAwait(false);
            if (result.Buffer.Length >= count)
            {
                byte[] bytes = result.Buffer.Slice(0, count).ToArray();
                input.AdvanceTo(result.Buffer.GetPosition(count));
                return bytes;
            }

            if (result.IsCompleted)
            {
                throw new AssertFailedException($"the stream ended after {result.Buffer.Length} of {count} bytes.");
            }

            input.AdvanceTo(result.Buffer.Start, result.Buffer.End);
        }
    }
}
