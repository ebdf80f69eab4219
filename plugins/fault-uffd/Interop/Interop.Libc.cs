using System.Runtime.InteropServices;

namespace Modular.FaultBackends.Userfaultfd;

/// <summary>P/Invoke declarations, one nested class per native library.</summary>
internal static partial class Interop
{
    /// <summary>
    /// glibc: the system calls the userfaultfd backend needs. Every import sets errno
    /// (<see cref="Marshal.GetLastPInvokeError"/>); none uses SuppressGCTransition, so a thread in
    /// one of them is in preemptive GC mode (DESIGN.md §5). The raw imports stay private; the thin
    /// wrappers below never hand out a raw file descriptor, only <see cref="FileDescriptorHandle"/>.
    /// </summary>
    internal static partial class Libc
    {
        private const string Library = "libc";

        public const int EPERM = 1;
        public const int ENOENT = 2;
        public const int EINTR = 4;
        public const int EBADF = 9;
        public const int EAGAIN = 11;
        public const int ENOMEM = 12;
        public const int EACCES = 13;
        public const int EBUSY = 16;
        public const int EEXIST = 17;
        public const int EINVAL = 22;
        public const int ENOTTY = 25;
        public const int ENOSYS = 38;

        public const int O_RDWR = 0x2;
        public const int O_NONBLOCK = 0x800;
        public const int O_CLOEXEC = 0x80000;
        public const int EFD_NONBLOCK = O_NONBLOCK;
        public const int EFD_CLOEXEC = O_CLOEXEC;
        public const short POLLIN = 0x1;
        public const short POLLERR = 0x8;
        public const short POLLHUP = 0x10;
        public const short POLLNVAL = 0x20;

        public const int PROT_NONE = 0x0;
        public const int PROT_READ = 0x1;
        public const int PROT_WRITE = 0x2;
        public const int MAP_PRIVATE = 0x02;
        public const int MAP_ANONYMOUS = 0x20;
        public const int MAP_HUGETLB = 0x40000;

        /// <summary>struct pollfd.</summary>
        [StructLayout(LayoutKind.Sequential)]
        internal struct PollFd
        {
            public int Fd;
            public short Events;
            public short Revents;
        }

        // syscall(2) and ioctl(2) are variadic in C. On x86_64 and arm64 Linux, integer and pointer
        // arguments of a variadic call travel in the same registers as fixed ones, and glibc's
        // syscall/ioctl are register-passing wrappers, so fixed-signature imports are correct there.
        [LibraryImport(Library, EntryPoint = "syscall", SetLastError = true)]
        private static partial long SyscallInt(long number, int argument);

        [LibraryImport(Library, EntryPoint = "ioctl", SetLastError = true)]
        private static unsafe partial int IoctlPointer(FileDescriptorHandle fd, nuint request, void* argument);

        [LibraryImport(Library, EntryPoint = "ioctl", SetLastError = true)]
        private static partial int IoctlInt(FileDescriptorHandle fd, nuint request, nint argument);

        [LibraryImport(Library, EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
        private static partial int OpenRaw(string path, int flags);

        [LibraryImport(Library, EntryPoint = "close", SetLastError = true)]
        internal static partial int Close(int fd);

        [LibraryImport(Library, EntryPoint = "read", SetLastError = true)]
        internal static unsafe partial nint Read(FileDescriptorHandle fd, void* buffer, nuint count);

        [LibraryImport(Library, EntryPoint = "write", SetLastError = true)]
        internal static unsafe partial nint Write(FileDescriptorHandle fd, void* buffer, nuint count);

        [LibraryImport(Library, EntryPoint = "poll", SetLastError = true)]
        private static unsafe partial int PollRaw(PollFd* fds, nuint count, int timeoutMs);

        [LibraryImport(Library, EntryPoint = "eventfd", SetLastError = true)]
        private static partial int EventfdRaw(uint initialValue, int flags);

        [LibraryImport(Library, EntryPoint = "mmap", SetLastError = true)]
        internal static partial nint Mmap(nint address, nuint length, int protection, int flags, int fd, nint offset);

        [LibraryImport(Library, EntryPoint = "munmap", SetLastError = true)]
        internal static partial int Munmap(nint address, nuint length);

        /// <summary>memcpy without SuppressGCTransition: a thread faulting inside it is in preemptive GC mode.</summary>
        [LibraryImport(Library, EntryPoint = "memcpy")]
        internal static partial nint Memcpy(nint destination, nint source, nuint count);

        /// <summary>MAP_FAILED.</summary>
        public static readonly nint MapFailed = -1;

        /// <summary>Calls userfaultfd(2) directly (glibc has no wrapper on older versions).</summary>
        /// <param name="flags">O_CLOEXEC, O_NONBLOCK, UFFD_USER_MODE_ONLY.</param>
        /// <param name="errno">errno when the call failed, else 0.</param>
        /// <returns>The new userfaultfd, or an invalid handle.</returns>
        public static FileDescriptorHandle OpenUserfaultfd(int flags, out int errno)
        {
            long number = RuntimeInformation.ProcessArchitecture switch
            {
                Architecture.X64 => UffdAbi.SysUserfaultfdX64,
                Architecture.Arm64 => UffdAbi.SysUserfaultfdArm64,
                _ => -1,
            };
            if (number < 0)
            {
                errno = ENOSYS;
                return new FileDescriptorHandle();
            }
            long fd = SyscallInt(number, flags);
            errno = fd < 0 ? Marshal.GetLastPInvokeError() : 0;
            return new FileDescriptorHandle(fd < 0 ? -1 : (int)fd);
        }

        /// <summary>open(2).</summary>
        public static FileDescriptorHandle Open(string path, int flags, out int errno)
        {
            int fd = OpenRaw(path, flags);
            errno = fd < 0 ? Marshal.GetLastPInvokeError() : 0;
            return new FileDescriptorHandle(fd);
        }

        /// <summary>eventfd(2).</summary>
        public static FileDescriptorHandle Eventfd(int flags, out int errno)
        {
            int fd = EventfdRaw(0, flags);
            errno = fd < 0 ? Marshal.GetLastPInvokeError() : 0;
            return new FileDescriptorHandle(fd);
        }

        /// <summary>ioctl(2) with a struct argument. Returns 0 or errno.</summary>
        public static unsafe int Ioctl(FileDescriptorHandle fd, uint request, void* argument)
        {
            // SAFETY: the caller passes a pointer to a live struct of the size encoded in request.
            return IoctlPointer(fd, request, argument) < 0 ? Marshal.GetLastPInvokeError() : 0;
        }

        /// <summary>
        /// USERFAULTFD_IOC_NEW on an open /dev/userfaultfd: a new userfaultfd with <paramref name="flags"/>.
        /// </summary>
        public static FileDescriptorHandle DeviceNewUserfaultfd(FileDescriptorHandle device, int flags, out int errno)
        {
            int fd = IoctlInt(device, UffdAbi.IoctlDeviceNew, flags);
            errno = fd < 0 ? Marshal.GetLastPInvokeError() : 0;
            return new FileDescriptorHandle(fd);
        }

        /// <summary>
        /// poll(2) for readability on two descriptors, blocking until one is readable.
        /// Returns 0 or errno; <paramref name="firstEvents"/>/<paramref name="secondEvents"/> get revents.
        /// </summary>
        public static unsafe int PollTwo(FileDescriptorHandle first, FileDescriptorHandle second, out short firstEvents, out short secondEvents)
        {
            firstEvents = 0;
            secondEvents = 0;
            bool firstAdded = false;
            bool secondAdded = false;
            try
            {
                // Keep both descriptors open while poll holds their raw numbers: a concurrent Dispose
                // then defers the close until we return instead of letting poll watch a reused number.
                first.DangerousAddRef(ref firstAdded);
                second.DangerousAddRef(ref secondAdded);
                PollFd* fds = stackalloc PollFd[2];
                fds[0] = new PollFd { Fd = (int)first.DangerousGetHandle(), Events = POLLIN };
                fds[1] = new PollFd { Fd = (int)second.DangerousGetHandle(), Events = POLLIN };
                // SAFETY: fds points at two initialised pollfd structs on this stack frame.
                int result = PollRaw(fds, 2, -1);
                if (result < 0)
                {
                    return Marshal.GetLastPInvokeError();
                }
                firstEvents = fds[0].Revents;
                secondEvents = fds[1].Revents;
                return 0;
            }
            finally
            {
                if (secondAdded)
                {
                    second.DangerousRelease();
                }
                if (firstAdded)
                {
                    first.DangerousRelease();
                }
            }
        }

        /// <summary>The symbolic name and text of an errno value, for messages (e.g. "EPERM (Operation not permitted)").</summary>
        public static string Describe(int errno)
        {
            string name = errno switch
            {
                EPERM => "EPERM",
                ENOENT => "ENOENT",
                EINTR => "EINTR",
                EBADF => "EBADF",
                EAGAIN => "EAGAIN",
                ENOMEM => "ENOMEM",
                EACCES => "EACCES",
                EBUSY => "EBUSY",
                EEXIST => "EEXIST",
                EINVAL => "EINVAL",
                ENOTTY => "ENOTTY",
                ENOSYS => "ENOSYS",
                _ => "errno " + errno.ToString(System.Globalization.CultureInfo.InvariantCulture),
            };
            return $"{name} ({Marshal.GetPInvokeErrorMessage(errno)})";
        }
    }
}
