using System.Runtime.InteropServices;

namespace Modular.Transports.Rdma.Interop;

/// <summary>libc: poll for the completion and connection-manager channels, memcpy for copies out of staging buffers.</summary>
internal static partial class Libc
{
    private const string Library = "libc";

    internal const short POLLIN = 0x001;

    [StructLayout(LayoutKind.Sequential)]
    internal struct PollFd
    {
        internal int Fd;
        internal short Events;
        internal short Revents;
    }

    [LibraryImport(Library, SetLastError = true)]
    internal static unsafe partial int poll(PollFd* fds, nuint count, int timeoutMs);

    /// <summary>
    /// A native copy. Deliberately without SuppressGCTransition: the destination may be guest RAM armed by
    /// a fault backend, and a thread that faults must be in preemptive mode (DESIGN.md §5).
    /// </summary>
    [LibraryImport(Library)]
    internal static partial nint memcpy(nint destination, nint source, nuint count);

    internal const int EINTR = 4;

    /// <summary>Waits up to <paramref name="timeoutMs"/> for either fd to become readable.</summary>
    internal static unsafe (bool First, bool Second) WaitReadable(int first, int second, int timeoutMs)
    {
        PollFd* fds = stackalloc PollFd[2];
        fds[0] = new PollFd { Fd = first, Events = POLLIN };
        fds[1] = new PollFd { Fd = second, Events = POLLIN };
        // SAFETY: fds points at two stack entries the call reads and writes.
        int ready = poll(fds, 2, timeoutMs);
        if (ready < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            if (errno == EINTR)
            {
                return (false, false);
            }

            throw NativeHandle.Failure("poll(completion and rdma_cm channels)", errno);
        }

        // POLLERR/POLLHUP also count: the next call on the channel reports what went wrong.
        return (fds[0].Revents != 0, fds[1].Revents != 0);
    }

    /// <summary>Copies <paramref name="count"/> bytes with a native memcpy (see <see cref="memcpy"/>).</summary>
    internal static void Copy(nint destination, nint source, nuint count) => memcpy(destination, source, count);
}
