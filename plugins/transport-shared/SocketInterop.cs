using System.Runtime.InteropServices;

namespace Modular.Transports.Shared;

/// <summary>
/// The libc socket calls that move native memory without a copy in user space: sendmsg(2) and
/// recvmsg(2) over iovec lists (<see cref="GatherSocketWriter"/>, <see cref="SocketRawChannel"/>),
/// with the structs laid out as on 64-bit Linux.
/// </summary>
internal static unsafe partial class SocketInterop
{
    internal const int MaxIovecs = 1024; // IOV_MAX
    internal const int MsgDontWait = 0x40;
    internal const int MsgWaitAll = 0x100;
    internal const int MsgNoSignal = 0x4000;
    internal const short PollIn = 0x1;
    internal const short PollOut = 0x4;
    internal const int EIntr = 4;
    internal const int EAgain = 11;
    internal const int EPipe = 32;
    internal const int EConnReset = 104;
    internal const int ENotConn = 107;
    private const int FGetFl = 3;
    private const int FSetFl = 4;
    private const int ONonBlock = 0x800;

    [LibraryImport("libc", EntryPoint = "sendmsg", SetLastError = true)]
    internal static partial nint SendMsg(int fd, MsgHdr* message, int flags);

    [LibraryImport("libc", EntryPoint = "recvmsg", SetLastError = true)]
    internal static partial nint RecvMsg(int fd, MsgHdr* message, int flags);

    [LibraryImport("libc", EntryPoint = "poll", SetLastError = true)]
    internal static partial int Poll(PollFd* fds, nuint count, int timeoutMs);

    [LibraryImport("libc", EntryPoint = "fcntl", SetLastError = true)]
    internal static partial int Fcntl(int fd, int command, nint argument);

    /// <summary>
    /// Skips <paramref name="done"/> bytes of the iovecs from <paramref name="from"/> on: whole iovecs
    /// move <paramref name="from"/> past them, a partly done one goes on from where it stopped.
    /// </summary>
    internal static void Advance(Iovec* iovecs, ref int from, nuint done)
    {
        while (done > 0 && done >= iovecs[from].Length)
        {
            done -= iovecs[from].Length;
            from++;
        }

        if (done > 0)
        {
            iovecs[from].Base += (nint)done;
            iovecs[from].Length -= done;
        }
    }

    /// <summary>
    /// Clears O_NONBLOCK on the descriptor. .NET leaves a socket's descriptor non-blocking for good
    /// once an async call used it (<see cref="System.Net.Sockets.Socket.Blocking"/> only emulates
    /// blocking in its own calls); raw calls that should block need the flag cleared.
    /// </summary>
    /// <returns>0, or the errno.</returns>
    internal static int MakeBlocking(System.Net.Sockets.Socket socket)
    {
        socket.Blocking = true;
        bool added = false;
        System.Net.Sockets.SafeSocketHandle handle = socket.SafeHandle;
        try
        {
            handle.DangerousAddRef(ref added);
            return MakeBlocking((int)handle.DangerousGetHandle());
        }
        finally
        {
            if (added)
            {
                handle.DangerousRelease();
            }
        }
    }

    /// <inheritdoc cref="MakeBlocking(System.Net.Sockets.Socket)"/>
    /// <param name="fd">The descriptor.</param>
    internal static int MakeBlocking(int fd) => SetNonBlocking(fd, false);

    /// <summary>
    /// Sets O_NONBLOCK on the descriptor: splice(2) has no MSG_DONTWAIT and takes the blocking mode
    /// from the socket's file (splice_to_socket). This restores what .NET set itself for the
    /// socket's async calls; its blocking receives then wait in its epoll emulation when no data is there.
    /// </summary>
    /// <returns>0, or the errno.</returns>
    internal static int MakeNonBlocking(int fd) => SetNonBlocking(fd, true);

    // fcntl(F_SETFL) with O_NONBLOCK set or cleared, only when it differs. Returns 0, or the errno.
    private static int SetNonBlocking(int fd, bool nonBlocking)
    {
        int flags = Fcntl(fd, FGetFl, 0);
        if (flags < 0)
        {
            return Marshal.GetLastPInvokeError();
        }

        int wanted = nonBlocking ? flags | ONonBlock : flags & ~ONonBlock;
        if (wanted != flags && Fcntl(fd, FSetFl, wanted) < 0)
        {
            return Marshal.GetLastPInvokeError();
        }

        return 0;
    }
}

[StructLayout(LayoutKind.Sequential)]
internal struct Iovec
{
    public nint Base;
    public nuint Length;
}

// struct msghdr on 64-bit Linux; the sequential layout adds the same padding as C.
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct MsgHdr
{
    public nint Name;
    public uint NameLen;
    public Iovec* Iov;
    public nuint IovLen;
    public nint Control;
    public nuint ControlLen;
    public int Flags;
}

[StructLayout(LayoutKind.Sequential)]
internal struct PollFd
{
    public int Fd;
    public short Events;
    public short Revents;
}
