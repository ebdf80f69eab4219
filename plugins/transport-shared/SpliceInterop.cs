using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Modular.Transports.Shared;

/// <summary>
/// The libc calls that send memory by reference through a pipe (<see cref="GatherSocketWriter"/>'s
/// splice path): vmsplice(2) puts user pages into a pipe, splice(2) moves them on to a socket, where
/// an AF_UNIX stream socket attaches them to its skbs without a copy (MSG_SPLICE_PAGES, Linux 6.5 on;
/// before, its sendpage did the same). Also the ring of mapped memory for the bytes written around
/// the pages, and ioctl(SIOCOUTQ), which tells how much of that ring the peer still has to read.
/// </summary>
internal static unsafe partial class SpliceInterop
{
    internal const int SpliceFMove = 0x1;
    internal const int SpliceFNonBlock = 0x2;
    internal const int EInval = 22;
    internal const int ENoSys = 38;
    internal const int PipeSize = 1 << 20; // the default /proc/sys/fs/pipe-max-size: 256 slots of a page
    private const int OCloExec = 0x80000;
    private const int FSetPipeSz = 1031;
    private const int SiocOutQ = 0x5411; // TIOCOUTQ
    private const int ProtRead = 0x1;
    private const int ProtWrite = 0x2;
    private const int MapPrivate = 0x02;
    private const int MapAnon = 0x20;
    private const int AfUnix = 1;
    private const int SockStream = 1;

    [LibraryImport("libc", EntryPoint = "vmsplice", SetLastError = true)]
    internal static partial nint VmSplice(int pipeWrite, Iovec* iovecs, nuint count, uint flags);

    [LibraryImport("libc", EntryPoint = "splice", SetLastError = true)]
    internal static partial nint Splice(int from, long* fromOffset, int to, long* toOffset, nuint length, uint flags);

    [LibraryImport("libc", EntryPoint = "pipe2", SetLastError = true)]
    private static partial int Pipe2(int* fds, int flags);

    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    private static partial int Ioctl(int fd, nuint request, int* argument);

    [LibraryImport("libc", EntryPoint = "mmap", SetLastError = true)]
    private static partial nint Mmap(nint address, nuint length, int protection, int flags, int fd, nint offset);

    [LibraryImport("libc", EntryPoint = "munmap", SetLastError = true)]
    private static partial int Munmap(nint address, nuint length);

    [LibraryImport("libc", EntryPoint = "socketpair", SetLastError = true)]
    private static partial int SocketPair(int domain, int type, int protocol, int* fds);

    [LibraryImport("libc", EntryPoint = "recv", SetLastError = true)]
    private static partial nint Recv(int fd, byte* buffer, nuint length, int flags);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    private static partial int Close(int fd);

    /// <summary>
    /// True when this kernel lets vmsplice(2) and splice(2) carry bytes into a unix stream socket
    /// (tried once per process over a socketpair of its own). Without them (an old kernel, a seccomp
    /// filter that refuses the calls) the writers send with sendmsg(2) only.
    /// </summary>
    internal static bool Supported => LazySupported.Value;

    private static readonly Lazy<bool> LazySupported = new(Probe);

    private static bool Probe()
    {
        int* pair = stackalloc int[2];
        int* pipe = stackalloc int[2];
        if (SocketPair(AfUnix, SockStream | OCloExec, 0, pair) != 0)
        {
            return false;
        }

        bool pipeOpen = Pipe2(pipe, OCloExec) == 0;
        try
        {
            byte* bytes = stackalloc byte[2] { 0x6d, 0x64 };
            var iovec = new Iovec { Base = (nint)bytes, Length = 2 };
            byte* received = stackalloc byte[2];
            return pipeOpen
                && VmSplice(pipe[1], &iovec, 1, SpliceFNonBlock) == 2
                && Splice(pipe[0], null, pair[0], null, 2, SpliceFMove | SpliceFNonBlock) == 2
                && Recv(pair[1], received, 2, SocketInterop.MsgDontWait) == 2
                && received[0] == 0x6d && received[1] == 0x64;
        }
        finally
        {
            if (pipeOpen)
            {
                _ = Close(pipe[0]);
                _ = Close(pipe[1]);
            }

            _ = Close(pair[0]);
            _ = Close(pair[1]);
        }
    }

    /// <summary>
    /// A pipe for splicing: both ends close-on-exec, grown to <see cref="PipeSize"/> when the limits
    /// allow (a smaller pipe only means more calls).
    /// </summary>
    /// <returns>0, or the errno.</returns>
    internal static int OpenPipe(out SafeFileHandle read, out SafeFileHandle write)
    {
        int* fds = stackalloc int[2];
        if (Pipe2(fds, OCloExec) != 0)
        {
            read = write = new SafeFileHandle();
            return Marshal.GetLastPInvokeError();
        }

        read = new SafeFileHandle(fds[0], ownsHandle: true);
        write = new SafeFileHandle(fds[1], ownsHandle: true);
        _ = SocketInterop.Fcntl(fds[1], FSetPipeSz, PipeSize); // EPERM above pipe-max-size or the user's pipe quota: keep the default
        return 0;
    }

    /// <summary>
    /// The bytes the socket holds that its peer has not yet read and freed (SIOCOUTQ; for AF_UNIX
    /// sk_wmem_alloc: the truesize of every queued skb, spliced pages included, until the receiver
    /// has read all of that skb).
    /// </summary>
    /// <returns>The count, or -1 when the call failed.</returns>
    internal static int OutQueue(int socketFd)
    {
        int queued;
        return Ioctl(socketFd, SiocOutQ, &queued) == 0 ? queued : -1;
    }

    /// <summary>Private anonymous memory of <paramref name="size"/> bytes, readable and writable, or 0 when mmap fails.</summary>
    internal static nint MapAnonymous(nuint size)
    {
        nint address = Mmap(0, size, ProtRead | ProtWrite, MapPrivate | MapAnon, -1, 0);
        return address == -1 ? 0 : address;
    }

    internal static void Unmap(nint address, nuint size) => _ = Munmap(address, size);
}
