using System.IO.Pipelines;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Threading.Tasks.Sources;
using Modular.Abstractions.Transports;

namespace Modular.Transports.Shared;

/// <summary>
/// The forward path of a source's main connection: a <see cref="PipeWriter"/> whose flush sends
/// everything written since the last one with sendmsg(2), as one gather list, on the flushing
/// thread (QEMU's migration thread does the same with writev); only when the socket is full does
/// the rest wait for room on a pool thread. Bytes written through
/// <see cref="GetSpan"/> sit in pinned chunks until then; bytes given by reference
/// (<see cref="WriteByReference"/>: guest RAM pages) are never copied in user space.
/// </summary>
/// <remarks>
/// <para>Measured on this 2-core host (1 GiB, tcp, postcopy): the copy of each page into a pipe
/// segment took about a fifth of the source's CPU, and the hand-over to a send loop on the thread
/// pool another share in context switches; both are gone here.</para>
/// <para>Over a unix socket the writer can splice instead (GatherSocketWriter.Splice.cs): the
/// pages then reach the peer's queue by reference, not copied by sendmsg; written bytes then come
/// from a <see cref="SpliceRing"/> rather than from the chunks.</para>
/// <para>Threads: one writing thread at a time, which awaits each flush before writing again.
/// <see cref="CancelPendingFlush"/> and <see cref="Abandon"/> may come from any thread: a flush
/// waiting on a full socket then ends within <see cref="PollSlice"/>.</para>
/// </remarks>
internal sealed unsafe partial class GatherSocketWriter : PipeWriter, IGatherWriter, IValueTaskSource<FlushResult>
{
    private const int ChunkSize = 64 * 1024;
    private const int MaxIovecs = SocketInterop.MaxIovecs;
    private const int PollSlice = 10; // ms between checks for a cancel while the socket is full (a wait for room ends at once when room comes)

    private readonly Socket _socket;
    private readonly string _description;
    private readonly Action<SocketError> _onError;
    private readonly SocketLockTurns? _turns; // tcp: receives on the same socket (the return path) get its lock in turn
    private readonly List<byte[]> _chunks = [];
    private Iovec[] _iovecs = new Iovec[2 * MaxIovecs];
    private int _iovecCount;
    private int _sendFrom;       // the first iovec a flush has not sent completely
    private int _chunk;          // the chunk GetSpan hands out
    private int _chunkUsed;      // its committed bytes
    private int _spanLength;     // what is left of the memory GetMemory last handed out
    private bool _spanInRing;    // which is the splice ring's (else a chunk's)
    private long _unflushed;
    private long _referenced;    // bytes given by reference since the last flush
    private long _written;       // bytes the socket has taken since the start
    private bool _sending;       // a flush is being sent (perhaps waiting on the send thread)
    private bool _splicing;      // and it goes out by splice
    private bool _completed;
    private volatile bool _cancelFlush;
    private volatile bool _abandoned;
    private volatile bool _sendThreadStop;
    private volatile bool _flushPending;
    private ManualResetValueTaskSourceCore<FlushResult> _flush; // a flush the send thread finishes
    private CancellationToken _flushCancellation;
    private readonly SemaphoreSlim _sendWork = new(0);
    private Thread? _sendThread;

    /// <param name="socket">The connected socket; the owner closes it.</param>
    /// <param name="description">Names the connection in errors.</param>
    /// <param name="onError">Records the socket error that ended sending.</param>
    /// <param name="splice">
    /// True to send flushes with pages by splice (unix sockets only, see GatherSocketWriter.Splice.cs)
    /// where the kernel allows it; the socket's descriptor is then made non-blocking, so its reads
    /// should wait in poll(2) first (<see cref="ThreadedSocketPipe"/>'s latency receive does).
    /// </param>
    /// <param name="ringSize">The splice ring's size (tests make it small).</param>
    /// <param name="ringBlock">The splice ring's block size.</param>
    /// <param name="turns">Over tcp, the turns at the socket's lock that the same socket's latency receives (the return path) take (<see cref="SocketLockTurns"/>); null for none.</param>
    internal GatherSocketWriter(Socket socket, string description, Action<SocketError> onError,
        bool splice = false, int ringSize = DefaultRingSize, int ringBlock = DefaultRingBlock, SocketLockTurns? turns = null)
    {
        _socket = socket;
        _description = description;
        _onError = onError;
        _turns = turns;
        _chunks.Add(NewChunk(ChunkSize));
        if (splice)
        {
            StartSplicing(ringSize, ringBlock);
        }
    }

    public override bool CanGetUnflushedBytes => true;

    public override long UnflushedBytes => _unflushed;

    /// <inheritdoc/>
    public void WriteByReference(nint address, int length)
    {
        ThrowIfCompleted();
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(length);
        AddIovec(address, length);
        _unflushed += length;
        _referenced += length;
    }

    public override Span<byte> GetSpan(int sizeHint = 0) => GetMemory(sizeHint).Span;

    public override Memory<byte> GetMemory(int sizeHint = 0)
    {
        ThrowIfCompleted();
        sizeHint = Math.Max(sizeHint, 1);
        Memory<byte> memory;
        if (_ring is not null && !_copyFlush)
        {
            if (_ring.TryGetMemory(sizeHint, _consumed, out memory))
            {
                _spanLength = memory.Length;
                _spanInRing = true;
                return memory;
            }

            // The ring's next block may still be queued in the socket (or is this flush's own): this
            // flush copies, and its bytes go to the chunks, which sendmsg leaves free after the flush.
            _copyFlush = true;
            RingFallbacks++;
        }

        if (_chunks[_chunk].Length - _chunkUsed < sizeHint)
        {
            NextChunk(sizeHint);
        }

        memory = _chunks[_chunk].AsMemory(_chunkUsed);
        _spanLength = memory.Length;
        _spanInRing = false;
        return memory;
    }

    public override void Advance(int bytes)
    {
        ThrowIfCompleted();
        if ((uint)bytes > (uint)_spanLength)
        {
            throw new ArgumentOutOfRangeException(nameof(bytes), $"Advanced {bytes} bytes past the {_spanLength} bytes handed out.");
        }

        if (bytes == 0)
        {
            return;
        }

        nint start = _spanInRing ? _ring!.Commit(bytes) : AddressOf(_chunks[_chunk]) + _chunkUsed;
        ref Iovec last = ref _iovecs[Math.Max(_iovecCount - 1, 0)];
        if (_iovecCount > 0 && last.Base + (nint)last.Length == start)
        {
            last.Length += (nuint)bytes; // straight after the previous copied bytes: one iovec
        }
        else
        {
            AddIovec(start, bytes);
        }

        if (!_spanInRing)
        {
            _chunkUsed += bytes;
        }

        _spanLength -= bytes;
        _unflushed += bytes;
    }

    /// <summary>
    /// Sends everything written since the last flush. While the socket takes it all, this happens on
    /// the calling thread and the flush is complete when it returns; when the socket is full, the
    /// rest goes out from a pool thread that waits for room, and the returned flush completes then
    /// (the caller's thread is not held, so a reader it starts afterwards can still run).
    /// </summary>
    public override ValueTask<FlushResult> FlushAsync(CancellationToken cancellationToken = default)
    {
        ThrowIfCompleted();
        Outcome outcome = _iovecCount == 0 ? Outcome.Sent : SendPending(cancellationToken, mayWait: false);
        if (outcome == Outcome.Full)
        {
            // The socket is full: the send thread waits for room and completes this flush; the
            // caller's continuation then runs on that thread (no hop through the thread pool, whose
            // free threads on a busy host could be hundreds of milliseconds away).
            _flush.Reset();
            _flushCancellation = cancellationToken;
            _flushPending = true;
            EnsureSendThread();
            _sendWork.Release();
            return new(this, _flush.Version);
        }

        return new(Finish(outcome));
    }

    FlushResult IValueTaskSource<FlushResult>.GetResult(short token) => _flush.GetResult(token);

    ValueTaskSourceStatus IValueTaskSource<FlushResult>.GetStatus(short token) => _flush.GetStatus(token);

    void IValueTaskSource<FlushResult>.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _flush.OnCompleted(continuation, state, token, flags);

    private void EnsureSendThread()
    {
        if (_sendThread is null)
        {
            _sendThread = new Thread(SendLoop) { IsBackground = true, Name = "migration send" };
            _sendThread.Start();
        }
    }

    /// <summary>Finishes flushes that found the socket full; ends with the writer.</summary>
    private void SendLoop()
    {
        while (true)
        {
            _sendWork.Wait();
            if (_flushPending)
            {
                // After Abandon this ends at once, canceled: a pending flush is never left hanging.
                FlushResult result;
                try
                {
                    result = Finish(SendPending(_flushCancellation, mayWait: true));
                }
                catch (Exception ex)
                {
                    _flushPending = false;
                    _flush.SetException(ex);
                    continue;
                }

                _flushPending = false;
                _flush.SetResult(result); // runs the writer's continuation here, which may flush again
                continue;
            }

            if (_sendThreadStop)
            {
                return;
            }
        }
    }

    private FlushResult Finish(Outcome outcome)
    {
        bool canceled = outcome == Outcome.Canceled || _cancelFlush;
        _cancelFlush = false;
        return new FlushResult(isCanceled: canceled, isCompleted: false);
    }

    public override void CancelPendingFlush() => _cancelFlush = true;

    /// <summary>
    /// Ends the output: with no error, sends what is left and then a FIN (the peer reads the end of
    /// the stream); with an error, drops it.
    /// </summary>
    public override void Complete(Exception? exception = null)
    {
        if (_completed)
        {
            return;
        }

        try
        {
            if (exception is null && !_abandoned)
            {
                if (_iovecCount > 0)
                {
                    SendPending(CancellationToken.None, mayWait: true);
                }

                _socket.Shutdown(SocketShutdown.Send);
            }
        }
        catch (Exception ex) when (ex is IOException or SocketException or ObjectDisposedException)
        {
            // The connection is gone; its error is recorded and the peer sees the end anyway.
        }
        finally
        {
            _completed = true;
            _iovecCount = 0;
            StopSendThread();
            ClosePipe();
        }
    }

    private void StopSendThread()
    {
        if (_sendThread is not null && !_sendThreadStop)
        {
            _sendThreadStop = true;
            _sendWork.Release();
        }
    }

    /// <summary>The socket is being closed by another thread: stop sending and never touch it again.</summary>
    internal void Abandon()
    {
        _abandoned = true;
        StopSendThread();
        _pipeWrite?.Dispose(); // a splice under way holds the pipe open until its call returns; then it fails
        _pipeRead?.Dispose();
    }

    private void ThrowIfCompleted()
    {
        if (_completed || _abandoned)
        {
            // The same exception a Pipe's writer throws, which AbortablePipe turns into "the connection ended".
            throw new InvalidOperationException("Writing is not allowed after writer was completed.");
        }
    }

    private void AddIovec(nint address, int length)
    {
        if (_iovecCount == _iovecs.Length)
        {
            Array.Resize(ref _iovecs, _iovecs.Length * 2);
        }

        _iovecs[_iovecCount++] = new Iovec { Base = address, Length = (nuint)length };
    }

    private void NextChunk(int sizeHint)
    {
        _chunk++;
        _chunkUsed = 0;
        if (_chunk == _chunks.Count)
        {
            _chunks.Add(NewChunk(Math.Max(ChunkSize, sizeHint)));
        }
        else if (_chunks[_chunk].Length < sizeHint)
        {
            _chunks[_chunk] = NewChunk(sizeHint);
        }
    }

    // Pinned: the iovecs point into the chunks until the flush.
    private static byte[] NewChunk(int size) => GC.AllocateUninitializedArray<byte>(size, pinned: true);

    private static nint AddressOf(byte[] chunk) => (nint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(chunk));

    private enum Outcome
    {
        Sent,
        Full,
        Canceled,
    }

    /// <summary>
    /// Sends the pending iovecs from <see cref="_sendFrom"/> on. Without <paramref name="mayWait"/> it
    /// stops at a full socket (Full: the rest stays pending); with it, it waits for room. A cancel
    /// drops what is left.
    /// </summary>
    private Outcome SendPending(CancellationToken cancellationToken, bool mayWait)
    {
        if (!_sending)
        {
            _sending = true; // the first call for this flush: how it goes out is decided once
            _splicing = ShouldSplice();
        }

        bool added = false;
        SafeSocketHandle handle = _socket.SafeHandle;
        bool keep = false;
        try
        {
            handle.DangerousAddRef(ref added);
            int fd = (int)handle.DangerousGetHandle();
            fixed (Iovec* iovecs = _iovecs)
            {
                Outcome outcome = _splicing ? SendBySplice(fd, iovecs, cancellationToken, mayWait) : SendByCopy(fd, iovecs, cancellationToken, mayWait);
                keep = outcome == Outcome.Full;
                return outcome;
            }
        }
        catch (ObjectDisposedException ex)
        {
            throw new IOException($"sending on {_description} failed: the socket was closed", ex);
        }
        finally
        {
            if (added)
            {
                handle.DangerousRelease();
            }

            if (!keep)
            {
                EndFlush();
            }
        }
    }

    /// <summary>The flush is over (sent, canceled or failed): the chunks and the iovecs start again.</summary>
    private void EndFlush()
    {
        if (_ring is not null)
        {
            EndSpliceFlush();
        }

        _sending = false;
        _sendFrom = 0;
        _iovecCount = 0;
        _chunk = 0;
        _chunkUsed = 0;
        _spanLength = 0;
        _unflushed = 0;
        _referenced = 0;
    }

    /// <summary>
    /// After a send call failed with <paramref name="errno"/>: true to call again (EINTR; EAGAIN once
    /// room came, with <paramref name="mayWait"/>); false with <paramref name="full"/> set for EAGAIN
    /// without it (the flush stops at a full socket); false otherwise (a real failure).
    /// </summary>
    private bool TryAgain(int errno, int fd, bool mayWait, out bool full)
    {
        full = false;
        if (errno == SocketInterop.EIntr)
        {
            return true;
        }

        if (errno != SocketInterop.EAgain)
        {
            return false;
        }

        if (!mayWait)
        {
            full = true;
            return false;
        }

        WaitForRoom(fd);
        return true;
    }

    /// <summary>sendmsg(2) over the iovecs, which the kernel copies into its skbs.</summary>
    private Outcome SendByCopy(int fd, Iovec* iovecs, CancellationToken cancellationToken, bool mayWait)
    {
        while (_sendFrom < _iovecCount)
        {
            if (_abandoned || _cancelFlush || cancellationToken.IsCancellationRequested)
            {
                return Outcome.Canceled;
            }

            int count = Math.Min(_iovecCount - _sendFrom, MaxIovecs);
            if (_turns is not null)
            {
                count = IovecsUpTo(iovecs + _sendFrom, count, _turns.BeforeBulkCall(int.MaxValue));
            }

            var message = new MsgHdr { Iov = iovecs + _sendFrom, IovLen = (nuint)count };
            nint sent = SocketInterop.SendMsg(fd, &message, SocketInterop.MsgDontWait | SocketInterop.MsgNoSignal);
            if (sent < 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                if (TryAgain(errno, fd, mayWait, out bool full))
                {
                    continue;
                }

                if (full)
                {
                    return Outcome.Full;
                }

                throw Failed(errno);
            }

            // Skip what went out; a partly sent iovec goes on from where it stopped.
            SocketInterop.Advance(iovecs, ref _sendFrom, (nuint)sent);
            _written += sent;
        }

        return Outcome.Sent;
    }

    /// <summary>How many of the first <paramref name="count"/> iovecs fit in <paramref name="bytes"/> (at least one).</summary>
    private static int IovecsUpTo(Iovec* iovecs, int count, int bytes)
    {
        long total = 0;
        for (int i = 0; i < count; i++)
        {
            total += (long)iovecs[i].Length;
            if (total >= bytes)
            {
                return i + 1;
            }
        }

        return count;
    }

    /// <summary>Waits until the socket has room, at most <see cref="PollSlice"/> (the caller looks for a cancel in between).</summary>
    private static void WaitForRoom(int fd)
    {
        var poll = new PollFd { Fd = fd, Events = SocketInterop.PollOut };
        _ = SocketInterop.Poll(&poll, 1, PollSlice);
    }

    /// <param name="errno">The error.</param>
    /// <param name="call">The call that failed, when not sendmsg (named in the message).</param>
    private IOException Failed(int errno, string? call = null)
    {
        SocketError error = errno switch
        {
            SocketInterop.EPipe or SocketInterop.EConnReset => SocketError.ConnectionReset,
            SocketInterop.ENotConn => SocketError.NotConnected,
            _ => SocketError.SocketError,
        };
        _onError(error);
        var inner = new SocketException((int)error, Marshal.GetPInvokeErrorMessage(errno));
        return new IOException($"sending on {_description} failed{(call is null ? "" : $" ({call})")}: {inner.Message}", inner);
    }
}
