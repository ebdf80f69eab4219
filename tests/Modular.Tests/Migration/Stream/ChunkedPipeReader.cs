using System.Buffers;
using System.IO.Pipelines;

namespace Modular.Tests.Migration.Stream;

/// <summary>
/// A pipe reader (test double) that reveals <paramref name="bytes"/> one chunk per <see cref="ReadAsync"/>,
/// each read's buffer made of segments of at most <paramref name="segment"/> bytes: so records end up split
/// across reads and across segments at places a test chooses, deterministically (a real pipe merges
/// whatever was written before the read).
/// </summary>
internal sealed class ChunkedPipeReader(byte[] bytes, int chunk, int segment) : PipeReader
{
    private long _consumed;
    private long _revealed;
    private bool _completed;
    private ReadOnlySequence<byte> _served;

    /// <summary>How many reads were served.</summary>
    public int Reads { get; private set; }

    public override ValueTask<ReadResult> ReadAsync(CancellationToken cancellationToken = default)
    {
        Reads++;
        _revealed = Math.Min(bytes.Length, _revealed + chunk);
        _served = Buffer();
        return new(new ReadResult(_served, isCanceled: false, isCompleted: _revealed == bytes.Length));
    }

    public override bool TryRead(out ReadResult result)
    {
        _served = Buffer();
        result = new ReadResult(_served, false, _revealed == bytes.Length);
        return true;
    }

    public override void AdvanceTo(SequencePosition consumed) => AdvanceTo(consumed, consumed);

    public override void AdvanceTo(SequencePosition consumed, SequencePosition examined)
    {
        _consumed += _served.Slice(_served.Start, consumed).Length;
        _served = default;
    }

    public override void CancelPendingRead()
    {
    }

    public override void Complete(Exception? exception = null) => _completed = true;

    /// <summary>True once the reader completed the pipe.</summary>
    public bool IsCompleted => _completed;

    // Segments are cut at multiples of `segment` in the whole stream, so a given record is split at the same place on every read.
    private ReadOnlySequence<byte> Buffer()
    {
        if (_consumed == _revealed)
        {
            return ReadOnlySequence<byte>.Empty;
        }

        Segment? first = null;
        Segment? last = null;
        long at = _consumed;
        while (at < _revealed)
        {
            long end = Math.Min(_revealed, (at / segment + 1) * segment);
            var next = new Segment(bytes.AsMemory((int)at, (int)(end - at)), last);
            first ??= next;
            last = next;
            at = end;
        }

        return new ReadOnlySequence<byte>(first!, 0, last!, last!.Memory.Length);
    }

    private sealed class Segment : ReadOnlySequenceSegment<byte>
    {
        public Segment(ReadOnlyMemory<byte> memory, Segment? previous)
        {
            Memory = memory;
            if (previous is not null)
            {
                RunningIndex = previous.RunningIndex + previous.Memory.Length;
                previous.Next = this;
            }
        }
    }
}
