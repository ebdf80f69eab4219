using System.Buffers;
using System.Buffers.Binary;
using System.IO.Pipelines;
using System.Runtime.CompilerServices;

namespace Modular.Conformance.Transports;

/// <summary>
/// The bytes the transport tests send: pseudo-random noise with a period that is a prime (so it never
/// lines up with buffer sizes), stamped every 4 KiB with the block number, so that a lost, duplicated,
/// corrupted or reordered block is caught at its offset. The receiver checks every byte against its
/// expected value, which is stronger than comparing checksums at the end and says where it broke.
/// </summary>
internal sealed class StreamPattern
{
    private const int Period = 1_048_573;
    private const int StampEvery = 4096;
    private static readonly int[] WriteSizes = [65536, 17, 65536, 131072, 4093, 65536, 1, 32768];
    private readonly byte[] _noise = new byte[Period];
    private readonly ulong _stampMix;

    /// <param name="seed">Tells apart the streams of one test (forward, return, channel 1...).</param>
    public StreamPattern(int seed)
    {
        new Random(seed).NextBytes(_noise);
        _stampMix = (ulong)seed * 0x9E3779B97F4A7C15UL;
    }

    /// <summary>Fills <paramref name="destination"/> with the stream's bytes at <paramref name="offset"/>.</summary>
    public void Fill(long offset, Span<byte> destination)
    {
        int done = 0;
        while (done < destination.Length)
        {
            int at = (int)((offset + done) % Period);
            int n = Math.Min(destination.Length - done, Period - at);
            _noise.AsSpan(at, n).CopyTo(destination[done..]);
            done += n;
        }

        Span<byte> stamp = stackalloc byte[8];
        for (long block = offset / StampEvery; block * StampEvery < offset + destination.Length; block++)
        {
            BinaryPrimitives.WriteUInt64BigEndian(stamp, (ulong)block ^ _stampMix);
            for (int j = 0; j < 8; j++)
            {
                long position = (block * StampEvery) + j;
                if (position >= offset && position < offset + destination.Length)
                {
                    destination[(int)(position - offset)] = stamp[j];
                }
            }
        }
    }

    /// <summary>Writes <paramref name="total"/> bytes in writes of varying size, flushing each; optionally completes the writer.</summary>
    /// <param name="output">Where to write.</param>
    /// <param name="total">How many bytes.</param>
    /// <param name="progress">Bytes whose flush completed, updated as it goes (may be null).</param>
    /// <param name="stop">Stops early when set (the bytes written so far stay a valid prefix).</param>
    /// <param name="complete">Complete the writer at the end.</param>
    public async Task<long> SendAsync(PipeWriter output, long total, StrongBox<long>? progress = null, Func<bool>? stop = null, bool complete = true)
    {
        long sent = 0;
        for (int i = 0; sent < total && !(stop?.Invoke() ?? false); i++)
        {
            int chunk = (int)Math.Min(WriteSizes[i % WriteSizes.Length], total - sent);
            int filled = 0;
            while (filled < chunk)
            {
                Span<byte> span = output.GetSpan(Math.Min(chunk - filled, 65536));
                int n = Math.Min(span.Length, chunk - filled);
                Fill(sent + filled, span[..n]);
                output.Advance(n);
                filled += n;
            }

            FlushResult flushed = await output.FlushAsync().ConfigureAwait(false);
            sent += chunk;
            if (flushed.IsCompleted)
            {
                break; // the reader has gone; it reports what it missed
            }

            if (progress is not null)
            {
                Volatile.Write(ref progress.Value, sent);
            }
        }

        if (complete)
        {
            await output.CompleteAsync().ConfigureAwait(false);
        }

        return sent;
    }

    /// <summary>
    /// Reads until the input ends, checking every byte; fails (AssertFailedException) at the first wrong
    /// byte, or when the count differs from <paramref name="expectedTotal"/> (when given).
    /// </summary>
    /// <param name="input">Where to read.</param>
    /// <param name="what">Names the stream in messages (e.g. "forward path").</param>
    /// <param name="expectedTotal">The number of bytes the sender wrote, when known in advance.</param>
    /// <param name="progress">Bytes checked so far (may be null).</param>
    /// <param name="pace">Called after each read (a slow reader waits here).</param>
    /// <param name="maxPerRead">Consume at most this many bytes per read (a slow reader takes little).</param>
    public async Task<long> ReceiveAsync(PipeReader input, string what, long? expectedTotal = null, StrongBox<long>? progress = null, Func<Task>? pace = null, long maxPerRead = long.MaxValue)
    {
        long received = 0;
        byte[] expected = new byte[65536];
        while (true)
        {
            ReadResult result = await input.ReadAsync().ConfigureAwait(false);
            ReadOnlySequence<byte> buffer = result.Buffer;
            if (buffer.Length > maxPerRead)
            {
                buffer = buffer.Slice(0, maxPerRead);
            }

            foreach (ReadOnlyMemory<byte> segment in buffer)
            {
                for (int at = 0; at < segment.Length; at += expected.Length)
                {
                    ReadOnlySpan<byte> got = segment.Span.Slice(at, Math.Min(expected.Length, segment.Length - at));
                    Fill(received, expected.AsSpan(0, got.Length));
                    if (!got.SequenceEqual(expected.AsSpan(0, got.Length)))
                    {
                        int index = got.CommonPrefixLength(expected.AsSpan(0, got.Length));
                        throw new AssertFailedException(
                            $"{what}: byte {received + index} is 0x{got[index]:x2}, expected 0x{expected[index]:x2}: the transport corrupted, lost or reordered " +
                            "the stream (bytes must arrive exactly as written, in order).");
                    }

                    received += got.Length;
                    if (expectedTotal is { } limit && received > limit)
                    {
                        throw new AssertFailedException($"{what}: more bytes arrived ({received}) than were written ({limit}): the transport duplicated data.");
                    }
                }
            }

            input.AdvanceTo(buffer.End);
            if (progress is not null)
            {
                Volatile.Write(ref progress.Value, received);
            }

            if (result.IsCompleted && buffer.Length == result.Buffer.Length)
            {
                break;
            }

            if (pace is not null)
            {
                await pace().ConfigureAwait(false);
            }
        }

        if (expectedTotal is { } total && received != total)
        {
            throw new AssertFailedException($"{what}: the stream ended after {received} of {total} bytes: the transport lost the rest (or ended the stream early).");
        }

        return received;
    }
}
