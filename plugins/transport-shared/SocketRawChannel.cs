using System.Net.Sockets;
using System.Runtime.InteropServices;
using Modular.Abstractions.Transports;

namespace Modular.Transports.Shared;

/// <summary>
/// A raw channel (<see cref="IRawChannels"/>) over a connected socket to the same endpoint as the main
/// connection, opened with the extra channels' handshake (<see cref="SocketChannelOpener"/>). The
/// socket's descriptor is made blocking: <see cref="Send"/> is one sendmsg(2) and
/// <see cref="Receive"/> one recvmsg(2) with MSG_WAITALL over the caller's segments as iovecs (up to
/// IOV_MAX per call, repeated after a partial transfer), so the bytes go between native memory and
/// the kernel with no copy in user space and no thread hop.
/// </summary>
/// <remarks>
/// <para>Threads: one sending and one receiving thread at a time, each blocking in its call.
/// <see cref="Abort"/> may come from any thread: it closes the socket with linger 0, which resets a
/// tcp connection. With a call blocked in the kernel, .NET's close first unblocks it (on Linux
/// connect(AF_UNSPEC) for tcp, which also resets; shutdown for unix) and closes the descriptor when
/// the call has returned: each call holds a reference on the socket's handle, so the descriptor is
/// never closed (and reused) under it. A unix socket has no reset: its peer sees the end of the
/// stream.</para>
/// <para>The handshake ran async, and .NET leaves such a descriptor non-blocking for good
/// (<see cref="Socket.Blocking"/> only changes how its own calls behave), so the constructor clears
/// O_NONBLOCK itself. Should a call still get EAGAIN, it polls and tries again.</para>
/// </remarks>
internal sealed unsafe class SocketRawChannel : IRawChannel
{
    private const int PollSlice = 100; // ms between checks for an abort, should a call have to poll

    private readonly Socket _socket;
    private volatile bool _aborted;

    /// <param name="socket">A connected socket past the handshake; the channel owns it.</param>
    /// <param name="remoteDescription">Names the main connection's peer.</param>
    /// <param name="index">The channel number.</param>
    /// <exception cref="TransportException">The descriptor could not be made blocking.</exception>
    internal SocketRawChannel(Socket socket, string remoteDescription, int index)
    {
        _socket = socket;
        Description = $"{remoteDescription} (raw channel {index})";
        int errno = SocketInterop.MakeBlocking(socket);
        if (errno != 0)
        {
            throw new TransportException($"Opening {Description} failed: cannot make its socket blocking: {Marshal.GetPInvokeErrorMessage(errno)}.");
        }
    }

    /// <inheritdoc/>
    public string Description { get; }

    /// <inheritdoc/>
    public void Send(ReadOnlySpan<RawSegment> segments) => _ = Transfer(segments, receive: false);

    /// <inheritdoc/>
    public bool Receive(ReadOnlySpan<RawSegment> segments)
    {
        long total = 0;
        foreach (RawSegment segment in segments)
        {
            total += segment.Length;
        }

        long received = Transfer(segments, receive: true);
        if (received == total)
        {
            return true;
        }

        if (received == 0)
        {
            return false;
        }

        throw new EndOfStreamException($"{Description} ended part-way: {received} of {total} bytes arrived before the peer closed the channel.");
    }

    // One sendmsg(2) or recvmsg(2) (MSG_WAITALL) per IOV_MAX segments, repeated after a partial
    // transfer. Returns the bytes moved: all of them, or (receiving) fewer when the peer ended the channel.
    private long Transfer(ReadOnlySpan<RawSegment> segments, bool receive)
    {
        ThrowIfAborted();
        string operation = receive ? "Receiving on" : "Sending on";
        Iovec* iovecs = stackalloc Iovec[Math.Min(segments.Length, SocketInterop.MaxIovecs)];
        long moved = 0;
        bool added = false;
        SafeSocketHandle handle = _socket.SafeHandle;
        try
        {
            handle.DangerousAddRef(ref added);
            int fd = (int)handle.DangerousGetHandle();
            for (int first = 0; first < segments.Length; first += SocketInterop.MaxIovecs)
            {
                int count = Math.Min(segments.Length - first, SocketInterop.MaxIovecs);
                nuint left = Fill(iovecs, segments.Slice(first, count));
                int from = 0;
                while (left > 0)
                {
                    ThrowIfAborted();
                    var message = new MsgHdr { Iov = iovecs + from, IovLen = (nuint)(count - from) };
                    nint done = receive
                        ? SocketInterop.RecvMsg(fd, &message, SocketInterop.MsgWaitAll)
                        : SocketInterop.SendMsg(fd, &message, SocketInterop.MsgNoSignal);
                    if (done < 0)
                    {
                        int errno = Marshal.GetLastPInvokeError();
                        if (errno == SocketInterop.EIntr || (errno == SocketInterop.EAgain && WaitUntilReady(fd, receive ? SocketInterop.PollIn : SocketInterop.PollOut)))
                        {
                            continue;
                        }

                        throw Failed(operation, errno);
                    }

                    if (done == 0 && receive)
                    {
                        ThrowIfAborted(); // an abort's shutdown also reads as the end
                        return moved;
                    }

                    moved += done;
                    left -= (nuint)done;
                    SocketInterop.Advance(iovecs, ref from, (nuint)done);
                }
            }

            return moved;
        }
        catch (ObjectDisposedException ex)
        {
            throw Closed(operation, ex);
        }
        finally
        {
            if (added)
            {
                handle.DangerousRelease();
            }
        }
    }

    /// <inheritdoc/>
    public void CompleteSend()
    {
        try
        {
            _socket.Shutdown(SocketShutdown.Send);
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
            // Already closed or reset: the peer sees the end anyway.
        }
    }

    /// <summary>
    /// Closes the socket with linger 0: calls blocked on either side fail at once, and later calls
    /// here throw an <see cref="IOException"/> saying the channel was aborted.
    /// </summary>
    public void Abort()
    {
        _aborted = true;
        try
        {
            _socket.LingerState = new LingerOption(true, 0);
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
            // Already closed: nothing to reset.
        }

        _socket.Dispose();
    }

    /// <summary>Closes the socket (the peer sees the end after what was sent); harmless twice.</summary>
    public void Dispose() => _socket.Dispose();

    /// <summary>
    /// Only should the descriptor be non-blocking after all (the constructor clears O_NONBLOCK):
    /// waits until it is ready, in slices so that an abort is seen. Returns true (try again).
    /// </summary>
    private static bool WaitUntilReady(int fd, short events)
    {
        var poll = new PollFd { Fd = fd, Events = events };
        _ = SocketInterop.Poll(&poll, 1, PollSlice);
        return true;
    }

    /// <summary>Writes the segments as iovecs; returns their total length.</summary>
    private static nuint Fill(Iovec* iovecs, ReadOnlySpan<RawSegment> segments)
    {
        nuint total = 0;
        for (int i = 0; i < segments.Length; i++)
        {
            RawSegment segment = segments[i];
            if (segment.Length < 1)
            {
                throw new ArgumentOutOfRangeException(nameof(segments), segment.Length, $"Segment {i} is {segment.Length} bytes long; a raw segment has at least 1 byte.");
            }

            iovecs[i] = new Iovec { Base = segment.Address, Length = (nuint)segment.Length };
            total += (nuint)segment.Length;
        }

        return total;
    }

    private void ThrowIfAborted()
    {
        if (_aborted)
        {
            throw new IOException($"{Description} was aborted.");
        }
    }

    private IOException Failed(string operation, int errno)
    {
        ThrowIfAborted(); // an abort's reset also fails calls in flight: say so rather than "reset"
        string why = errno is SocketInterop.EPipe or SocketInterop.EConnReset
            ? $"the peer closed or reset the channel ({Marshal.GetPInvokeErrorMessage(errno)})"
            : Marshal.GetPInvokeErrorMessage(errno);
        return new IOException($"{operation} {Description} failed: {why}.");
    }

    private IOException Closed(string operation, ObjectDisposedException ex) => _aborted
        ? new IOException($"{Description} was aborted.", ex)
        : new IOException($"{operation} {Description} failed: the channel was closed.", ex);
}
