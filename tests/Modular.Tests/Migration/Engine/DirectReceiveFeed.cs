using System.Buffers;
using System.IO.Pipelines;
using Modular.Abstractions.Transports;

namespace Modular.Tests.Migration.Engine;

/// <summary>
/// A test double of a transport that offers <see cref="IDirectReceive"/>, over a stream in memory: a
/// "receiving thread" (the caller of <see cref="Run"/>) writes chunks of random size into an inline pipe,
/// so the reader's continuation runs inside each flush, as on <c>ThreadedSocketPipe</c>; there the
/// reader may take the next bytes straight into its segments (a random count, as a socket delivers what
/// has arrived) and hand back what it does not use, which the pipe delivers before anything later.
/// </summary>
internal sealed class DirectReceiveFeed : IDirectReceive
{
    private readonly byte[] _stream;
    private readonly Random _random;
    private readonly int _maxChunk;
    private readonly Pipe _pipe = new(new PipeOptions(
        readerScheduler: PipeScheduler.Inline,
        writerScheduler: PipeScheduler.Inline,
        pauseWriterThreshold: 0,
        useSynchronizationContext: false));
    private readonly List<byte> _back = [];
    private Thread? _thread;
    private bool _inFlush;
    private int _at;
    private bool _ended;

    /// <param name="stream">The bytes the source sent.</param>
    /// <param name="seed">Chooses the chunk and receive sizes.</param>
    /// <param name="maxChunk">The largest chunk one receive (either way) delivers.</param>
    public DirectReceiveFeed(byte[] stream, int seed, int maxChunk)
    {
        _stream = stream;
        _random = new Random(seed);
        _maxChunk = maxChunk;
    }

    /// <summary>What the loader reads.</summary>
    public PipeReader Reader => _pipe.Reader;

    /// <summary>Bytes that went straight into the reader's segments.</summary>
    public long DirectBytes { get; private set; }

    /// <summary>Bytes handed back.</summary>
    public long GivenBack { get; private set; }

    /// <inheritdoc/>
    public bool CanReceiveDirect => _inFlush && _back.Count == 0 && !_ended && Thread.CurrentThread == _thread;

    /// <summary>Delivers the whole stream through the pipe (and direct receives), then completes it.</summary>
    public void Run()
    {
        _thread = Thread.CurrentThread;
        PipeWriter writer = _pipe.Writer;
        while (true)
        {
            if (_back.Count > 0)
            {
                writer.Write(_back.ToArray());
                _back.Clear();
            }
            else if (_at == _stream.Length || _ended)
            {
                writer.Complete();
                return;
            }
            else
            {
                int count = Math.Min(_stream.Length - _at, _random.Next(1, _maxChunk + 1));
                writer.Write(_stream.AsSpan(_at, count));
                _at += count;
            }

            _inFlush = true;
            FlushResult result = writer.FlushAsync().AsTask().GetAwaiter().GetResult();
            _inFlush = false;
            if (result.IsCompleted)
            {
                return; // the reader stopped (it failed)
            }
        }
    }

    /// <inheritdoc/>
    public unsafe int ReceiveDirect(ReadOnlySpan<RawSegment> segments)
    {
        Assert.IsTrue(CanReceiveDirect, "ReceiveDirect called when CanReceiveDirect is false");
        Assert.IsFalse(_pipe.Reader.TryRead(out ReadResult unread) && Release(unread), "the reader left bytes unread in the pipe before a direct receive");
        if (_at == _stream.Length)
        {
            _ended = true; // as a socket's receive returns 0 once the peer closed
            return 0;
        }

        long room = 0;
        foreach (RawSegment segment in segments)
        {
            room += segment.Length;
        }

        int count = (int)Math.Min(Math.Min(room, _stream.Length - _at), _random.Next(1, _maxChunk + 1));
        int done = 0;
        foreach (RawSegment segment in segments)
        {
            int n = Math.Min(segment.Length, count - done);
            if (n == 0)
            {
                break;
            }

            _stream.AsSpan(_at + done, n).CopyTo(new Span<byte>((void*)segment.Address, n));
            done += n;
        }

        _at += count;
        DirectBytes += count;
        return count;
    }

    /// <inheritdoc/>
    public void GiveBack(ReadOnlySpan<byte> bytes)
    {
        _back.AddRange(bytes.ToArray());
        GivenBack += bytes.Length;
    }

    // True when the pipe held bytes (after putting them back).
    private bool Release(ReadResult unread)
    {
        bool any = !unread.Buffer.IsEmpty;
        _pipe.Reader.AdvanceTo(unread.Buffer.Start);
        return any;
    }
}
