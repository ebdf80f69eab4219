using System.IO.Pipelines;
using System.Runtime.InteropServices;
using Modular.Abstractions.Transports;

namespace Modular.Conformance.Transports;

public abstract partial class TransportConformanceTests
{
    /// <summary>
    /// When the accepted end offers <see cref="IDirectReceive"/> (the destination receives precopy pages
    /// straight into guest RAM with it): <see cref="IDirectReceive.CanReceiveDirect"/> is false on a
    /// thread that is not inside a read; and while 64 MiB of the forward path arrive, a reader that
    /// after each read takes the next bytes directly into two native segments and hands a random part
    /// back gets every byte exactly once, in order (given-back bytes come through the pipe first), and
    /// no direct receive is allowed until they have.
    /// </summary>
    [TestMethod]
    public async Task DirectReceivesAndHandedBackBytesKeepTheStreamInOrder()
    {
        RequireLivePeer("direct receives");
        await using ConnectedPair pair = await ConnectPairAsync().ConfigureAwait(false);
        if (pair.Destination is not IDirectReceive direct)
        {
            Assert.Inconclusive($"{Name} does not offer IDirectReceive, which is optional.");
            return;
        }

        Expect.That(!await Task.Run(() => direct.CanReceiveDirect).ConfigureAwait(false),
            $"{Name}: IDirectReceive.CanReceiveDirect is true on a thread-pool thread outside any read; it may be true only where a direct receive cannot race the transport's own receiving.");

        const long total = 64L << 20;
        const int room = 256 * 1024;
        var pattern = new StreamPattern(31);
        Task<long> sending = pattern.SendAsync(pair.Source.Transport.Output, total);
        nint native = Marshal.AllocHGlobal(room);
        try
        {
            long received = 0, directBytes = 0, givenBack = 0, chances = 0;
            var random = new Random(31);
            byte[] expected = new byte[room];
            PipeReader input = pair.Destination.Transport.Input;
            await Step(Task.Run(async () =>
            {
                while (true)
                {
                    ReadResult read = await input.ReadAsync().ConfigureAwait(false);
                    foreach (ReadOnlyMemory<byte> segment in read.Buffer)
                    {
                        Check(segment.Span, "through the input pipe");
                    }

                    input.AdvanceTo(read.Buffer.End);
                    if (read.IsCompleted)
                    {
                        return;
                    }

                    if (!direct.CanReceiveDirect)
                    {
                        continue;
                    }

                    chances++;
                    int first = random.Next(1, 9);
                    RawSegment[] segments = [new(native, first), new(native + first, random.Next(1, room - first))];
                    int count = direct.ReceiveDirect(segments);
                    if (count == 0)
                    {
                        continue; // the end (the pipe reports it) or not possible now
                    }

                    int keep = random.Next(0, count + 1);
                    unsafe
                    {
                        Check(new ReadOnlySpan<byte>((void*)native, keep), "received directly");
                        direct.GiveBack(new ReadOnlySpan<byte>((void*)(native + keep), count - keep));
                    }

                    directBytes += keep;
                    givenBack += count - keep;
                    Expect.That(count == keep || !direct.CanReceiveDirect,
                        $"{Name}: IDirectReceive.CanReceiveDirect is true while handed-back bytes wait to be delivered; a direct receive then would take later bytes before them.");
                }
            }), "reading 64 MiB with direct receives").ConfigureAwait(false);

            await Step(sending, "sending 64 MiB").ConfigureAwait(false);
            Expect.That(received == total, $"{Name}: {received} bytes arrived with direct receives and bytes handed back, {total} were sent: bytes were lost or duplicated.");
            if (chances == 0)
            {
                Assert.Inconclusive($"{Name} offers IDirectReceive but never allowed a direct receive while 64 MiB arrived.");
            }

            Expect.That(directBytes > 0 && givenBack > 0, $"{Name}: no bytes came directly ({directBytes}) or none were handed back ({givenBack}) in {chances} direct receives.");

            void Check(ReadOnlySpan<byte> got, string how)
            {
                for (int at = 0; at < got.Length; at += expected.Length)
                {
                    ReadOnlySpan<byte> part = got.Slice(at, Math.Min(expected.Length, got.Length - at));
                    pattern.Fill(received, expected.AsSpan(0, part.Length));
                    int same = part.CommonPrefixLength(expected.AsSpan(0, part.Length));
                    Expect.That(same == part.Length,
                        $"{Name}: byte {received + same} {how} is wrong: direct receives and handed-back bytes must keep the stream exactly in order.");
                    received += part.Length;
                }
            }
        }
        finally
        {
            pair.Destination.Abort(); // a direct receive still blocked ends before its memory is freed
            await pair.DisposeAsync().ConfigureAwait(false);
            Marshal.FreeHGlobal(native);
        }
    }
}
