using System.Buffers;
using System.IO.Pipelines;
using System.Net.Sockets;
using Modular.Abstractions.Threading;

namespace Modular.Transports.Shared;

/// <summary>
/// A duplex pipe over a socket whose receive side is built for latency: a dedicated thread blocks in
/// recv(2) and hands each arrival to the reader inline, on that thread, so no received message waits
/// for a thread-pool thread (on a busy 2-core host that is where a requested page used to spend most
/// of its time). Sends run at once on the flushing thread (an extra channel: postcopy preempt; the
/// destination's return path); for the source's bulk pages one sendmsg(2) per flush over a gather
/// list that takes RAM pages by reference (<see cref="GatherSocketWriter"/>).
/// </summary>
/// <remarks>
/// Threads: the receive thread is the only writer of <see cref="Input"/>'s pipe; the reader's
/// continuations run on it (keep them short and never block them on this pipe's own data).
/// <see cref="Output"/> may be written by one thread at a time.
/// </remarks>
internal sealed class ThreadedSocketPipe : ISocketPipe
{
    private const int ReceiveChunk = SocketPipeTuning.SegmentSize;
    private const int PollSlice = 500; // ms: a wait for data looks for a close this often (a close's shutdown also ends it)

    private static readonly PipeOptions InlineOptions = new(
        pool: RecyclingMemoryPool.Segments,
        readerScheduler: PipeScheduler.Inline,
        writerScheduler: PipeScheduler.Inline,
        pauseWriterThreshold: SocketPipeTuning.PauseWriterThreshold,
        resumeWriterThreshold: SocketPipeTuning.ResumeWriterThreshold,
        minimumSegmentSize: SocketPipeTuning.SegmentSize,
        useSynchronizationContext: false);

    private readonly Socket _socket;
    private readonly string _description;
    private readonly Pipe _receive = new(InlineOptions);
    private readonly Pipe _send;
    private readonly GatherSocketWriter? _gather;
    private readonly bool _latencyReceive;
    private readonly SocketLockTurns? _turns; // tcp: the latency direction gets the socket's lock in turn (null for unix)
    private readonly Task _sendLoop;
    private volatile SocketError _error = SocketError.Success;
    private volatile bool _closing;
    private Thread? _receiveThread;
    private bool _inFlush;          // the receive thread is inside its flush (the reader runs inline there)
    private byte[] _givenBack = [];  // bytes the reader handed back (the first _givenBackLength), delivered before the next receive
    private int _givenBackLength;
    private bool _directEnded;      // a direct receive saw the end or a failure; the loop ends the pipe with it
    private Exception? _directFailure;

    /// <param name="socket">A connected socket; the pipe owns it.</param>
    /// <param name="description">Names the connection in errors.</param>
    /// <param name="threadName">The receive thread's name.</param>
    /// <param name="gatherSends">True for the source's bulk data: <see cref="Output"/> is a <see cref="GatherSocketWriter"/> (sendmsg on the flushing thread, RAM pages by reference). Otherwise a flush hands the bytes to send(2) at once on the flushing thread.</param>
    /// <param name="latencyReceive">True when what arrives is latency-critical (page requests, requested pages): the receive thread is raised (<see cref="Modular.Abstractions.Threading.LatencyThreads"/>: real-time where permitted). Not for bulk data, whose work would then crowd out everything else.</param>
    /// <param name="spliceSends">With <paramref name="gatherSends"/> over a unix socket: flushes with pages go out by vmsplice and splice (<see cref="GatherSocketWriter"/>). Needs <paramref name="latencyReceive"/>, whose thread waits for data in poll(2): splicing makes the descriptor non-blocking again.</param>
    internal ThreadedSocketPipe(Socket socket, string description, string threadName = "channel recv", bool latencyReceive = true, bool gatherSends = false, bool spliceSends = false)
    {
        _latencyReceive = latencyReceive;
        _socket = socket;
        _turns = SocketLockTurns.For(socket);
        _description = description;
        _send = new Pipe(InlineOptions);
        // The connect or accept and the channel handshake ran async, and .NET leaves such a
        // descriptor non-blocking for good: its blocking Receive then waits for its epoll thread
        // to say that data came, and that thread wakes this one, two wake-ups per arrival. On a
        // busy host the epoll thread (normal priority) waited behind the bulk threads for a core:
        // a postcopy request went through it twice (source's return path, destination's preempt
        // channel), measured 0.7-6 ms in the slow ones. With O_NONBLOCK cleared, recv(2) blocks
        // in the kernel and an arrival wakes this thread itself. Closing still unblocks it (.NET
        // shuts a socket down under a blocked call). Should clearing fail, the emulation stays.
        // A splicing writer sets the flag again (splice(2) has no MSG_DONTWAIT); the receive thread
        // of such a pipe waits in poll(2) first, so its recv(2) finds data and does not need to block.
        _ = SocketInterop.MakeBlocking(socket);
        RecyclingMemoryPool.Segments.EnsureFree(RecyclingMemoryPool.SegmentsPerPipe); // none allocated during a migration
        StandbyThreads.Run(ReceiveLoop, threadName);
        if (gatherSends)
        {
            _gather = new GatherSocketWriter(socket, description, error => _error = error, splice: spliceSends && latencyReceive, turns: latencyReceive ? _turns : null);
            _sendLoop = Task.CompletedTask;
        }
        else
        {
            _sendLoop = SendLoopAsync();
        }
    }

    public PipeReader Input => _receive.Reader;

    public PipeWriter Output => _gather ?? (PipeWriter)_send.Writer;

    /// <inheritdoc/>
    public SocketError Error => _error;

    /// <inheritdoc/>
    public Socket Socket => _socket;

    /// <summary>The turns at the socket's lock (tcp), or null (unix, or switched off).</summary>
    internal SocketLockTurns? Turns => _turns;

    /// <summary>Completes both pipes and closes the socket; the receive thread ends with it. Never throws.</summary>
    public void Close()
    {
        _closing = true;
        try
        {
            if (_gather is not null)
            {
                // The writing thread may be inside a flush: it stops there, and nothing here touches its state.
                _gather.Abandon();
            }
            else
            {
                _send.Writer.Complete();
            }

            _receive.Reader.Complete();
        }
        catch (Exception)
        {
            // The loops may fail on a socket the peer already closed; the channel is going anyway.
        }

        try
        {
            _socket.Shutdown(SocketShutdown.Both);
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
            // Already closed or reset.
        }

        _socket.Dispose();
    }

    private void ReceiveLoop()
    {
        _receiveThread = Thread.CurrentThread;
        if (_latencyReceive)
        {
            _ = LatencyThreads.RaiseCurrentThread();
        }

        PipeWriter writer = _receive.Writer;
        Exception? failure = null;
        try
        {
            while (true)
            {
                if (_givenBackLength > 0)
                {
                    writer.Write(_givenBack.AsSpan(0, _givenBackLength));
                    _givenBackLength = 0;
                }
                else if (_directEnded)
                {
                    failure = _directFailure;
                    break;
                }
                else
                {
                    // Bulk data with latency-critical sends the other way (the destination's page
                    // requests): smaller receives while they come, and never one ahead of a waiting send.
                    int chunk = !_latencyReceive && _turns is not null ? _turns.BeforeBulkCall(ReceiveChunk) : ReceiveChunk;
                    Memory<byte> memory = writer.GetMemory(chunk);
                    if (_latencyReceive)
                    {
                        WaitReadable();
                    }

                    // A latency receive with bulk sends the other way (the source's return path): the
                    // writer lets it have the socket's lock before its next sendmsg.
                    SocketLockTurns? turn = _latencyReceive && _gather is not null ? _turns : null;
                    turn?.Enter();
                    int received;
                    try
                    {
                        received = _socket.Receive(memory.Span[..Math.Min(chunk, memory.Length)]);
                    }
                    catch (SocketException ex) when (ex.SocketErrorCode == SocketError.WouldBlock)
                    {
                        continue; // a splicing writer made the descriptor non-blocking, and nothing was there after all
                    }
                    finally
                    {
                        turn?.Exit();
                    }

                    if (received == 0)
                    {
                        break;
                    }

                    writer.Advance(received);
                }

                _inFlush = true;
                FlushResult result;
                try
                {
                    ValueTask<FlushResult> flush = writer.FlushAsync();
                    result = flush.IsCompletedSuccessfully ? flush.Result : flush.AsTask().GetAwaiter().GetResult();
                }
                finally
                {
                    _inFlush = false;
                }

                if (result.IsCompleted || result.IsCanceled)
                {
                    break;
                }
            }
        }
        catch (SocketException ex)
        {
            _error = ex.SocketErrorCode;
            failure = new IOException($"receiving on {_description} failed: {ex.Message}", ex);
        }
        catch (ObjectDisposedException)
        {
            // Closed locally.
        }
        catch (InvalidOperationException)
        {
            // The reader completed while we were flushing: closed locally.
        }

        try
        {
            writer.Complete(failure);
        }
        catch (InvalidOperationException)
        {
            // Already completed.
        }
    }

    /// <inheritdoc cref="Modular.Abstractions.Transports.IDirectReceive.CanReceiveDirect"/>
    internal bool CanReceiveDirect => _inFlush && _givenBackLength == 0 && !_directEnded && !_closing && Thread.CurrentThread == _receiveThread;

    /// <inheritdoc cref="Modular.Abstractions.Transports.IDirectReceive.ReceiveDirect"/>
    /// <remarks>
    /// One recvmsg(2) over the segments on the receiving thread, which is inside its flush (the reader
    /// runs inline there), so no receive of the loop runs meanwhile. The descriptor blocks (the
    /// constructor cleared O_NONBLOCK); a close shuts the socket down first, which ends the call. The
    /// end or a failure is kept for the loop, which ends the pipe with it after the reader's
    /// continuation returns: the reader sees it on its next read.
    /// </remarks>
    internal unsafe int ReceiveDirect(ReadOnlySpan<Modular.Abstractions.Transports.RawSegment> segments)
    {
        if (!CanReceiveDirect || segments.IsEmpty)
        {
            return 0;
        }

        if (segments.Length > SocketInterop.MaxIovecs)
        {
            throw new ArgumentOutOfRangeException(nameof(segments), segments.Length, $"At most {SocketInterop.MaxIovecs} segments per receive.");
        }

        PipeReader reader = _receive.Reader;
        if (reader.TryRead(out ReadResult unread))
        {
            bool any = !unread.Buffer.IsEmpty;
            reader.AdvanceTo(unread.Buffer.Start);
            if (any)
            {
                throw new InvalidOperationException($"A direct receive on {_description} while its input pipe still holds {unread.Buffer.Length} unread bytes: the reader must consume what it was given first.");
            }
        }

        Iovec* iovecs = stackalloc Iovec[segments.Length];
        for (int i = 0; i < segments.Length; i++)
        {
            iovecs[i] = new Iovec { Base = segments[i].Address, Length = (nuint)segments[i].Length };
        }

        bool added = false;
        SafeSocketHandle handle = _socket.SafeHandle;
        try
        {
            handle.DangerousAddRef(ref added);
            int fd = (int)handle.DangerousGetHandle();
            while (true)
            {
                var message = new MsgHdr { Iov = iovecs, IovLen = (nuint)segments.Length };
                nint received = SocketInterop.RecvMsg(fd, &message, 0);
                if (received > 0)
                {
                    return (int)received;
                }

                if (received == 0)
                {
                    _directEnded = true; // the peer ended the stream (or a close shut it down)
                    return 0;
                }

                int errno = System.Runtime.InteropServices.Marshal.GetLastPInvokeError();
                if (errno == SocketInterop.EIntr)
                {
                    continue;
                }

                if (errno == SocketInterop.EAgain)
                {
                    WaitReadable();
                    continue;
                }

                _error = errno == SocketInterop.EConnReset ? SocketError.ConnectionReset : SocketError.SocketError;
                _directFailure = new IOException($"receiving on {_description} failed: {System.Runtime.InteropServices.Marshal.GetPInvokeErrorMessage(errno)}");
                _directEnded = true;
                return 0;
            }
        }
        catch (ObjectDisposedException)
        {
            _directEnded = true; // closed locally
            return 0;
        }
        finally
        {
            if (added)
            {
                handle.DangerousRelease();
            }
        }
    }

    /// <inheritdoc cref="Modular.Abstractions.Transports.IDirectReceive.GiveBack"/>
    internal void GiveBack(ReadOnlySpan<byte> bytes)
    {
        if (bytes.IsEmpty)
        {
            return;
        }

        if (_givenBack.Length - _givenBackLength < bytes.Length)
        {
            Array.Resize(ref _givenBack, Math.Max(_givenBackLength + bytes.Length, 2 * _givenBack.Length));
        }

        bytes.CopyTo(_givenBack.AsSpan(_givenBackLength));
        _givenBackLength += bytes.Length;
    }

    /// <summary>
    /// Waits in poll(2) until there is something to receive (or the socket ended), so that the
    /// following recv(2) does not block. A thread blocked in recv(2) on a unix socket is woken by
    /// every write-space wake-up of that socket too (both directions share one wait queue, and
    /// recv's wait does not look at the event): on the source's return path each buffer of bulk
    /// pages that the destination freed woke this nice -20 thread, which then preempted a bulk
    /// thread for nothing (about 1700 times in a 2 GiB migration). poll's wait only wakes for the
    /// events asked for. <see cref="Close"/> shuts the socket down first, which ends the wait.
    /// </summary>
    private unsafe void WaitReadable()
    {
        var poll = new PollFd { Fd = (int)_socket.Handle, Events = SocketInterop.PollIn };
        while (!_closing)
        {
            int ready = SocketInterop.Poll(&poll, 1, PollSlice);
            if (ready > 0 || (ready < 0 && System.Runtime.InteropServices.Marshal.GetLastPInvokeError() != SocketInterop.EIntr))
            {
                return; // readable, ended, or a failure the receive then reports
            }

            // Nothing yet, or a signal interrupted the wait: under splicing the descriptor is
            // non-blocking, so a receive now could find nothing and fail; wait again.
        }
    }

    // Inline schedulers: a flush runs this loop's continuation, and so the send, on the flushing thread.
    private async Task SendLoopAsync()
    {
        PipeReader reader = _send.Reader;
        try
        {
            while (true)
            {
                ReadResult read = await reader.ReadAsync().ConfigureAwait(false);
                ReadOnlySequence<byte> buffer = read.Buffer;
                // Sent on the flushing thread; against bulk receives (the destination's return path
                // while pages arrive) it takes its turn at the socket's lock.
                SocketLockTurns? turn = _latencyReceive ? null : _turns;
                turn?.Enter();
                try
                {
                    foreach (ReadOnlyMemory<byte> segment in buffer)
                    {
                        for (int sent = 0; sent < segment.Length;)
                        {
                            sent += _socket.Send(segment.Span[sent..]);
                        }
                    }
                }
                finally
                {
                    turn?.Exit();
                }

                reader.AdvanceTo(buffer.End);
                if (read.IsCompleted || read.IsCanceled)
                {
                    break;
                }
            }

            // The writer completed: tell the peer (FIN), as the main connection does.
            _socket.Shutdown(SocketShutdown.Send);
            reader.Complete();
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException or InvalidOperationException)
        {
            if (ex is SocketException socketError)
            {
                _error = socketError.SocketErrorCode;
            }

            // Writes after this fail: the writer sees the reader completed with the error.
            reader.Complete(new IOException($"sending on {_description} failed: {ex.Message}", ex));
        }
    }
}
