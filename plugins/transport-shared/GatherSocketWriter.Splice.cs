using System.Net.Sockets;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Modular.Transports.Shared;

/// <summary>
/// The splice path: a flush that carries pages by reference goes out with vmsplice(2) into a pipe
/// and splice(2) from the pipe into the unix socket, so the kernel attaches the pages to its skbs
/// (MSG_SPLICE_PAGES) instead of copying them; the only copy left is the receiver's recv.
/// </summary>
/// <remarks>
/// <para>Why: perf showed sendmsg's copy (_copy_from_iter) as about 56 % of the source's send thread.
/// Measured on this 2-core host: sending 1 GiB of 256-page flushes to a receiving thread, the
/// sending thread used 0.13-0.16 CPU-s with splice against 0.21-0.25 s with sendmsg (two alternating
/// pairs). Bench, idle 2 GiB over unix, two alternating pairs: with splice 1.61 s (source CPU 0.88 s,
/// on a host at load 6.8) and 0.66 s (0.47 s); with sendmsg 0.73 s (0.66 s) and 0.67 s (0.53 s). The
/// destination (0.59-0.65 s either way) sets the pace, so the total follows it.</para>
/// <para>Aliasing. The socket holds references to the pages until the peer has read them, so what
/// the pages hold then is what the peer reads:</para>
/// <list type="bullet">
/// <item>Guest RAM pages may change meanwhile. In precopy a page written after it was handed over is
/// dirty in the log and sent again, so the destination's newer (or torn) copy is replaced; in the
/// final phase and in postcopy the vCPUs are stopped. The source keeps guest RAM mapped for the
/// saver's lifetime (and an unmapped page the kernel still holds keeps its bytes).</item>
/// <item>Written bytes (stream headers) must not change: they come from a <see cref="SpliceRing"/>,
/// whose blocks are reused only once proven read. The proof is ioctl(SIOCOUTQ): for an AF_UNIX
/// socket it is sk_wmem_alloc, the truesize (at least the data) of every skb the socket has queued
/// and the peer has not yet read in full and freed, spliced or copied; the peer frees them in
/// stream order. So every byte before (bytes written) - SIOCOUTQ has been read, and a block whose
/// last splice ended before that is free. A block not yet free is not waited for: that flush is
/// copied by sendmsg (its bytes then go to the reused chunks, which a copy leaves free).</item>
/// <item>The pipe is spliced empty before each vmsplice, and a flush ends only with the pipe empty;
/// a canceled or failed flush drops the pipe (and with it its references) for a new one.</item>
/// </list>
/// <para>Only unix: over tcp the kernel copies spliced pages on loopback anyway, and its SIOCOUTQ
/// counts unacknowledged bytes, not unread ones. Small flushes (fewer referenced bytes than
/// <see cref="MinSpliceBytes"/>: zero-page records, device state) go by sendmsg, which costs less
/// than pinning a few pages. The kernel's support is tried once (<see cref="SpliceInterop.Supported"/>);
/// without it, or without a pipe or ring, the writer sends by copy only.</para>
/// <para>splice(2) takes its blocking mode from the socket's file, not from a flag: the socket's
/// descriptor is made non-blocking, and a full socket gives EAGAIN as sendmsg's MSG_DONTWAIT does.
/// Nor has it MSG_NOSIGNAL: a peer gone raises SIGPIPE, which .NET ignores, and the call fails with
/// EPIPE.</para>
/// </remarks>
internal sealed unsafe partial class GatherSocketWriter
{
    internal const int DefaultRingSize = 2 << 20;   // about 500 flushes of 256 page records' headers; far more than a socket queues
    internal const int DefaultRingBlock = 64 << 10;
    private const long MinSpliceBytes = 32 << 10;   // 8 pages

    private SpliceRing? _ring;
    private SafeFileHandle? _pipeRead;
    private SafeFileHandle? _pipeWrite;
    private Func<long, bool> _consumed = static _ => false;
    private bool _copyFlush;     // this flush has bytes in the chunks: it goes by sendmsg
    private long _inPipe;        // bytes vmspliced and not yet spliced on
    private long _provenRead;    // every byte of the stream before this the peer has read

    /// <summary>True while flushes with pages go out by splice.</summary>
    internal bool Splices => _pipeWrite is not null;

    /// <summary>Bytes that went out by splice (for tests and measurements).</summary>
    internal long SplicedBytes { get; private set; }

    /// <summary>Flushes copied because the ring's next block was still unread (for tests).</summary>
    internal int RingFallbacks { get; private set; }

    private void StartSplicing(int ringSize, int ringBlock)
    {
        if (_socket.AddressFamily != AddressFamily.Unix || !SpliceInterop.Supported)
        {
            return;
        }

        SpliceRing? ring = SpliceRing.Create(ringSize, ringBlock);
        if (ring is null || !OpenPipe() || SocketInterop.MakeNonBlocking((int)_socket.Handle) != 0)
        {
            ClosePipe(); // and copy, as over tcp
            return;
        }

        _ring = ring;
        _consumed = Consumed;
    }

    private bool ShouldSplice() => _pipeWrite is not null && !_copyFlush && _referenced >= MinSpliceBytes;

    /// <summary>
    /// vmsplice into the pipe, splice on into the socket, until all is sent (or the socket is full, or
    /// a cancel). The pipe holds what vmsplice took (one slot per page or part of a page, so about
    /// half a pipe of page records per call) and is emptied before the next vmsplice.
    /// </summary>
    private Outcome SendBySplice(int fd, Iovec* iovecs, CancellationToken cancellationToken, bool mayWait)
    {
        SafeFileHandle read = _pipeRead!, write = _pipeWrite!;
        bool readAdded = false, writeAdded = false;
        try
        {
            read.DangerousAddRef(ref readAdded);
            write.DangerousAddRef(ref writeAdded);
            int pipeRead = (int)read.DangerousGetHandle(), pipeWrite = (int)write.DangerousGetHandle();
            while (_inPipe > 0 || _sendFrom < _iovecCount)
            {
                if (_abandoned || _cancelFlush || cancellationToken.IsCancellationRequested)
                {
                    return Outcome.Canceled;
                }

                if (_inPipe == 0)
                {
                    nint taken = SpliceInterop.VmSplice(pipeWrite, iovecs + _sendFrom, (nuint)Math.Min(_iovecCount - _sendFrom, MaxIovecs), SpliceInterop.SpliceFNonBlock);
                    if (taken <= 0)
                    {
                        int errno = taken < 0 ? Marshal.GetLastPInvokeError() : 0;
                        if (errno == SocketInterop.EIntr)
                        {
                            continue;
                        }

                        throw errno == 0 ? new IOException($"sending on {_description} failed: vmsplice(2) took nothing into an empty pipe") : Failed(errno, "vmsplice");
                    }

                    SocketInterop.Advance(iovecs, ref _sendFrom, (nuint)taken);
                    _inPipe = taken;
                }

                nint sent = SpliceInterop.Splice(pipeRead, null, fd, null, (nuint)_inPipe, SpliceInterop.SpliceFMove | SpliceInterop.SpliceFNonBlock);
                if (sent <= 0)
                {
                    int errno = sent < 0 ? Marshal.GetLastPInvokeError() : 0;
                    if (TryAgain(errno, fd, mayWait, out bool full))
                    {
                        continue;
                    }

                    if (full)
                    {
                        return Outcome.Full;
                    }

                    throw errno == 0 ? new IOException($"sending on {_description} failed: splice(2) moved nothing out of a full pipe") : Failed(errno, "splice");
                }

                _inPipe -= sent;
                _written += sent;
                SplicedBytes += sent;
            }

            return Outcome.Sent;
        }
        finally
        {
            if (writeAdded)
            {
                write.DangerousRelease();
            }

            if (readAdded)
            {
                read.DangerousRelease();
            }
        }
    }

    /// <summary>
    /// Marks the ring blocks a spliced flush used; drops a pipe that still holds bytes (a cancel or
    /// an error: they must never go out after what comes next).
    /// </summary>
    private void EndSpliceFlush()
    {
        _ring!.FlushEnded(_splicing, _written);
        _copyFlush = false;
        if (_inPipe > 0)
        {
            _inPipe = 0;
            ClosePipe();
            if (!_abandoned && !_completed)
            {
                _ = OpenPipe(); // without one, the writer copies from now on
            }
        }
    }

    /// <summary>
    /// The SIOCOUTQ proof (see the remarks): true when the peer has read the stream up to
    /// <paramref name="streamEnd"/>. Asks the kernel only when what is already known does not tell.
    /// </summary>
    private bool Consumed(long streamEnd)
    {
        if (streamEnd <= _provenRead)
        {
            return true;
        }

        bool added = false;
        SafeSocketHandle handle = _socket.SafeHandle;
        try
        {
            handle.DangerousAddRef(ref added);
            int queued = SpliceInterop.OutQueue((int)handle.DangerousGetHandle());
            if (queued < 0)
            {
                return false;
            }

            _provenRead = Math.Max(_provenRead, _written - queued);
            return streamEnd <= _provenRead;
        }
        catch (ObjectDisposedException)
        {
            return false; // closed: the flush copies, and fails there naming the connection
        }
        finally
        {
            if (added)
            {
                handle.DangerousRelease();
            }
        }
    }

    private bool OpenPipe()
    {
        if (SpliceInterop.OpenPipe(out SafeFileHandle read, out SafeFileHandle write) != 0)
        {
            return false;
        }

        _pipeRead = read;
        _pipeWrite = write;
        return true;
    }

    /// <summary>Closes the pipe (a send still inside a call on it holds it open until it returns); the writer copies from then on.</summary>
    private void ClosePipe()
    {
        SafeFileHandle? read = _pipeRead, write = _pipeWrite;
        _pipeWrite = null;
        _pipeRead = null;
        write?.Dispose();
        read?.Dispose();
    }
}
