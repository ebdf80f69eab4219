using System.Buffers;
using System.Buffers.Binary;
using System.IO.Pipelines;
using System.Runtime.CompilerServices;
using System.Text;

namespace Modular.Core.Migration.Stream;

/// <summary>
/// Reads the migration stream from a <see cref="PipeReader"/>, counting every byte so that each error
/// names the offset and the record being read (<see cref="MigrationStreamException"/>).
/// Reads complete synchronously while the pipe already holds the bytes, so the per-page path costs no
/// allocation; byte ranges are handed out as slices of the pipe's own buffer.
/// Not thread-safe: one reader thread (main incoming thread, then the listen thread after LISTEN;
/// on the source, the return-path thread).
/// </summary>
public sealed partial class MigrationStreamReader
{
    private readonly PipeReader _input;
    private readonly CancellationToken _cancellationToken;
    private ReadOnlySequence<byte> _buffer;
    private bool _holdingResult;
    private bool _completed;
    private long _position;
    private long _recordStart;
    private string _record = "stream header";
    private string? _lastRamBlockId;
    private string? _lastReqPagesBlockId;

    /// <summary>The cancellation this reader's reads observe.</summary>
    internal CancellationToken CancellationToken => _cancellationToken;

    /// <summary>Reads from <paramref name="input"/>.</summary>
    /// <param name="input">The transport's pipe reader, or a pipe over a PACKAGED blob.</param>
    /// <param name="limits">Length limits; <see cref="StreamLimits.Default"/> when null.</param>
    /// <param name="baseOffset">The stream offset of the first byte (for nested PACKAGED blobs).</param>
    /// <param name="cancellationToken">Cancels every read of this reader.</param>
    public MigrationStreamReader(PipeReader input, StreamLimits? limits = null, long baseOffset = 0, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(input);
        _input = input;
        Limits = limits ?? StreamLimits.Default;
        _position = baseOffset;
        _recordStart = baseOffset;
        _cancellationToken = cancellationToken;
    }

    /// <summary>The limits this reader enforces.</summary>
    public StreamLimits Limits { get; }

    /// <summary>Offset of the next byte to read.</summary>
    public long Position => _position;

    /// <summary>The record being read, as named in errors.</summary>
    public string CurrentRecord => _record;

    /// <summary>Offset where the current record started.</summary>
    public long RecordStart => _recordStart;

    /// <summary>Names the record that starts at the current position, for error messages.</summary>
    /// <param name="record">E.g. <c>section START</c>, <c>command PING</c>, <c>ram record</c>.</param>
    public void BeginRecord(string record) => BeginRecord(record, _position);

    /// <summary>Names the record that started at <paramref name="start"/> (e.g. at its already-read type byte).</summary>
    /// <param name="record">The record name.</param>
    /// <param name="start">Offset of the record's first byte.</param>
    public void BeginRecord(string record, long start)
    {
        _record = record;
        _recordStart = start;
    }

    /// <summary>An error for the current record, placed at the record's first byte.</summary>
    /// <param name="detail">What is wrong, naming the thing (section id, block, address).</param>
    public MigrationStreamException Error(string detail) => new(_recordStart, _record, detail);

    /// <summary>An error for the current record, placed at <paramref name="offset"/>.</summary>
    /// <param name="offset">Where the offending field started.</param>
    /// <param name="detail">What is wrong.</param>
    public MigrationStreamException ErrorAt(long offset, string detail) => new(offset, _record, detail);

    /// <summary>Reads one byte.</summary>
    /// <param name="what">The field, for errors.</param>
    public ValueTask<byte> ReadU8Async(string what) =>
        _buffer.Length >= 1 ? new(TakeU8()) : SlowU8(what);

    /// <summary>Reads a big-endian 16-bit value.</summary>
    /// <param name="what">The field, for errors.</param>
    public ValueTask<ushort> ReadBe16Async(string what) =>
        _buffer.Length >= 2 ? new(TakeBe16()) : SlowBe16(what);

    /// <summary>Reads a big-endian 32-bit value.</summary>
    /// <param name="what">The field, for errors.</param>
    public ValueTask<uint> ReadBe32Async(string what) =>
        _buffer.Length >= 4 ? new(TakeBe32()) : SlowBe32(what);

    /// <summary>Reads a big-endian 64-bit value.</summary>
    /// <param name="what">The field, for errors.</param>
    public ValueTask<ulong> ReadBe64Async(string what) =>
        _buffer.Length >= 8 ? new(TakeBe64()) : SlowBe64(what);

    /// <summary>Reads a u8 length and that many bytes as a string (QEMU's counted string).</summary>
    /// <param name="what">The field, for errors.</param>
    public async ValueTask<string> ReadCountedStringAsync(string what)
    {
        int length = await ReadU8Async(what + " length").ConfigureAwait(false);
        ReadOnlySequence<byte> bytes = await ReadBytesAsync(length, what).ConfigureAwait(false);
        return DecodeString(bytes);
    }

    /// <summary>
    /// Reads <paramref name="count"/> bytes and returns them as a slice of the pipe's buffer, valid only
    /// until the next call on this reader: copy them out (or into guest RAM) before reading on.
    /// </summary>
    /// <param name="count">How many bytes.</param>
    /// <param name="what">The field, for errors.</param>
    public ValueTask<ReadOnlySequence<byte>> ReadBytesAsync(int count, string what)
    {
        if (_buffer.Length >= count)
        {
            return new(Take(count));
        }

        return Slow(count, what);

        [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
        async ValueTask<ReadOnlySequence<byte>> Slow(int count, string what)
        {
            await FillAsync(count, what).ConfigureAwait(false);
            return Take(count);
        }
    }

    /// <summary>
    /// Reads a length-prefixed blob into a new array after checking <paramref name="length"/> against
    /// <paramref name="limit"/>, so a corrupt length never causes a huge allocation.
    /// </summary>
    /// <param name="length">The length read from the wire.</param>
    /// <param name="limit">The largest acceptable length.</param>
    /// <param name="lengthOffset">Offset of the length field, for the error.</param>
    /// <param name="what">The field, for errors.</param>
    public async ValueTask<byte[]> ReadBlobAsync(ulong length, ulong limit, long lengthOffset, string what)
    {
        if (length > limit)
        {
            throw ErrorAt(lengthOffset, $"{what} length {length} exceeds the limit of {limit} bytes; the stream is corrupt or not from a compatible source");
        }

        byte[] blob = GC.AllocateUninitializedArray<byte>((int)length);
        int done = 0;
        while (done < blob.Length)
        {
            if (_buffer.IsEmpty)
            {
                await FillAsync(1, what, blob.Length - done).ConfigureAwait(false);
            }

            int n = (int)Math.Min(_buffer.Length, blob.Length - done);
            Take(n).CopyTo(blob.AsSpan(done));
            done += n;
        }

        return blob;
    }

    /// <summary>Returns the next byte without consuming it, or -1 at the clean end of the stream.</summary>
    /// <param name="what">The field, for errors.</param>
    public async ValueTask<int> PeekU8Async(string what)
    {
        if (_buffer.IsEmpty)
        {
            if (!await TryFillAsync(1, what).ConfigureAwait(false))
            {
                return -1;
            }
        }

        return _buffer.FirstSpan[0];
    }

    /// <summary>True when the stream has ended exactly here (no byte left and the writer completed).</summary>
    public async ValueTask<bool> IsAtEndAsync() => await PeekU8Async("end of stream").ConfigureAwait(false) < 0;

    /// <summary>Tells the pipe everything read so far is consumed and stops reading.</summary>
    /// <param name="error">Passed to the pipe's writer side, if any.</param>
    public void Complete(Exception? error = null)
    {
        if (_holdingResult)
        {
            _input.AdvanceTo(_buffer.Start);
            _holdingResult = false;
        }

        _buffer = default;
        _input.Complete(error);
    }

    private static string DecodeString(ReadOnlySequence<byte> bytes) =>
        bytes.IsSingleSegment ? Encoding.UTF8.GetString(bytes.FirstSpan) : Encoding.UTF8.GetString(bytes.ToArray());

    private ReadOnlySequence<byte> Take(long count)
    {
        ReadOnlySequence<byte> slice = _buffer.Slice(0, count);
        _buffer = _buffer.Slice(count);
        _position += count;
        return slice;
    }

    private byte TakeU8()
    {
        byte value = _buffer.FirstSpan[0];
        _buffer = _buffer.Slice(1);
        _position++;
        return value;
    }

    private ushort TakeBe16()
    {
        Span<byte> tmp = stackalloc byte[2];
        return BinaryPrimitives.ReadUInt16BigEndian(TakeSmall(tmp));
    }

    private uint TakeBe32()
    {
        Span<byte> tmp = stackalloc byte[4];
        return BinaryPrimitives.ReadUInt32BigEndian(TakeSmall(tmp));
    }

    private ulong TakeBe64()
    {
        Span<byte> tmp = stackalloc byte[8];
        return BinaryPrimitives.ReadUInt64BigEndian(TakeSmall(tmp));
    }

    // Returns the next tmp.Length bytes: straight from the first segment when they fit, else copied into tmp.
    private ReadOnlySpan<byte> TakeSmall(Span<byte> tmp)
    {
        ReadOnlySpan<byte> first = _buffer.FirstSpan;
        ReadOnlySpan<byte> result;
        if (first.Length >= tmp.Length)
        {
            result = first[..tmp.Length];
        }
        else
        {
            _buffer.Slice(0, tmp.Length).CopyTo(tmp);
            result = tmp;
        }

        _buffer = _buffer.Slice(tmp.Length);
        _position += tmp.Length;
        return result;
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<byte> SlowU8(string what) { await FillAsync(1, what).ConfigureAwait(false); return TakeU8(); }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<ushort> SlowBe16(string what) { await FillAsync(2, what).ConfigureAwait(false); return TakeBe16(); }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<uint> SlowBe32(string what) { await FillAsync(4, what).ConfigureAwait(false); return TakeBe32(); }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<ulong> SlowBe64(string what) { await FillAsync(8, what).ConfigureAwait(false); return TakeBe64(); }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask FillAsync(long count, string what, long? wanted = null)
    {
        if (!await TryFillAsync(count, what).ConfigureAwait(false))
        {
            long need = wanted ?? count;
            throw ErrorAt(_position, _buffer.IsEmpty && need == count
                ? $"truncated: the stream ended where {what} ({need} bytes) was expected"
                : $"truncated: the stream ended inside {what} ({_buffer.Length} of {need} bytes present)");
        }
    }

    // Reads from the pipe until at least count bytes are buffered; false when the writer completed first.
    // The pipe requires AdvanceTo before each further ReadAsync: everything before _buffer.Start is
    // consumed, everything up to its end has been examined.
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<bool> TryFillAsync(long count, string what)
    {
        while (_buffer.Length < count)
        {
            if (_completed)
            {
                return false;
            }

            if (_holdingResult)
            {
                _input.AdvanceTo(_buffer.Start, _buffer.End);
                _holdingResult = false;
            }

            ReadResult result;
            try
            {
                result = await _input.ReadAsync(_cancellationToken).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is not OperationCanceledException)
            {
                throw new MigrationStreamException(_position, _record, $"the transport failed while reading {what}: {ex.Message}", ex);
            }

            _holdingResult = true;
            _buffer = result.Buffer;
            _completed = result.IsCompleted;
            if (result.IsCanceled)
            {
                throw new MigrationStreamException(_position, _record, $"reading {what} was cancelled (the connection is being torn down)");
            }
        }

        return true;
    }
}
