using System.Runtime.InteropServices;

namespace Modular.Core.Interop;

/// <summary>
/// The C library calls the VMM needs (glibc, x86-64). Raw imports only: callers go through the
/// safe wrappers in <c>Kvm/</c> and <c>Memory/</c>. Every import sets the last error so callers can
/// report errno.
/// </summary>
internal static unsafe partial class Libc
{
    private const string Library = "libc";

    // open(2)
    internal const int O_RDWR = 0x2;
    internal const int O_CLOEXEC = 0x80000;

    // mmap(2)
    internal const int PROT_READ = 0x1;
    internal const int PROT_WRITE = 0x2;
    internal const int MAP_SHARED = 0x01;
    internal const int MAP_PRIVATE = 0x02;
    internal const int MAP_ANONYMOUS = 0x20;
    internal const int MAP_NORESERVE = 0x4000;
    internal const int MAP_HUGETLB = 0x40000;
    internal const int MAP_HUGE_SHIFT = 26;
    internal const int MAP_HUGE_2MB = 21 << MAP_HUGE_SHIFT;
    internal static readonly nint MAP_FAILED = -1;

    // madvise(2)
    internal const int MADV_DONTNEED = 4;
    internal const int MADV_REMOVE = 9;
    internal const uint MFD_CLOEXEC = 0x0001;
    internal const int MADV_HUGEPAGE = 14;
    internal const int MADV_POPULATE_WRITE = 23;

    // eventfd(2)
    internal const int EFD_NONBLOCK = 0x800;
    internal const int EFD_CLOEXEC = 0x80000;

    // sigprocmask(2)
    internal const int SIG_BLOCK = 0;
    internal const int SIG_UNBLOCK = 1;
    internal const int SIG_SETMASK = 2;

    /// <summary>glibc's user-space sigset_t is 1024 bits.</summary>
    internal const int GlibcSigsetBytes = 128;

    /// <summary>The kernel's sigset_t (what KVM_SET_SIGNAL_MASK takes) is 64 bits on x86-64.</summary>
    internal const int KernelSigsetBytes = 8;

    // errno values (asm-generic/errno-base.h)
    internal const int EPERM = 1;
    internal const int ENOENT = 2;
    internal const int ESRCH = 3;
    internal const int EINTR = 4;
    internal const int E2BIG = 7;
    internal const int EAGAIN = 11;
    internal const int ENOMEM = 12;
    internal const int EACCES = 13;
    internal const int EINVAL = 22;

    [StructLayout(LayoutKind.Sequential)]
    internal struct Timespec
    {
        public long Seconds;
        public long Nanoseconds;
    }

    [LibraryImport(Library, EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int Open(string path, int flags);

    [LibraryImport(Library, EntryPoint = "close", SetLastError = true)]
    internal static partial int Close(int fd);

    [LibraryImport(Library, EntryPoint = "ioctl", SetLastError = true)]
    internal static partial int Ioctl(SafeFileDescriptor fd, nuint request, nint argument);

    [LibraryImport(Library, EntryPoint = "ioctl", SetLastError = true)]
    internal static partial int Ioctl(SafeFileDescriptor fd, nuint request, void* argument);

    [LibraryImport(Library, EntryPoint = "mmap", SetLastError = true)]
    internal static partial nint Mmap(nint address, nuint length, int protection, int flags, int fd, long offset);

    [LibraryImport(Library, EntryPoint = "mmap", SetLastError = true)]
    internal static partial nint Mmap(nint address, nuint length, int protection, int flags, SafeFileDescriptor fd, long offset);

    [LibraryImport(Library, EntryPoint = "munmap", SetLastError = true)]
    internal static partial int Munmap(nint address, nuint length);

    [LibraryImport(Library, EntryPoint = "memfd_create", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial int MemfdCreate(string name, uint flags);

    [LibraryImport(Library, EntryPoint = "fallocate", SetLastError = true)]
    internal static partial int Fallocate(SafeHandle fd, int mode, long offset, long length);

    [LibraryImport(Library, EntryPoint = "ftruncate", SetLastError = true)]
    internal static partial int Ftruncate(int fd, long length);

    [LibraryImport(Library, EntryPoint = "madvise", SetLastError = true)]
    internal static partial int Madvise(nint address, nuint length, int advice);

    /// <summary>
    /// memcpy: every copy to or from guest RAM goes through here so that a thread faulting on a page
    /// is in preemptive GC mode (DESIGN.md §5). Deliberately not <c>SuppressGCTransition</c>.
    /// </summary>
    [LibraryImport(Library, EntryPoint = "memcpy")]
    internal static partial nint Memcpy(void* destination, void* source, nuint length);

    /// <summary>memcmp: reads guest RAM natively, like <see cref="Memcpy"/> (DESIGN.md §5). Deliberately not <c>SuppressGCTransition</c>.</summary>
    [LibraryImport(Library, EntryPoint = "memcmp")]
    internal static partial int Memcmp(void* first, void* second, nuint length);

    [LibraryImport(Library, EntryPoint = "eventfd", SetLastError = true)]
    internal static partial int Eventfd(uint initialValue, int flags);

    [LibraryImport(Library, EntryPoint = "getpid")]
    internal static partial int Getpid();

    [LibraryImport(Library, EntryPoint = "gettid")]
    internal static partial int Gettid();

    /// <summary>setpriority(2); with <c>which</c> = PRIO_PROCESS and a thread id it sets that thread's nice value.</summary>
    [LibraryImport(Library, EntryPoint = "setpriority", SetLastError = true)]
    internal static partial int Setpriority(int which, uint who, int priority);

    /// <summary>getpriority(2): the nice value (-1 is also a valid value: clear errno to tell).</summary>
    [LibraryImport(Library, EntryPoint = "getpriority", SetLastError = true)]
    internal static partial int Getpriority(int which, uint who);

    internal const int PRIO_PROCESS = 0;

    /// <summary>sched_getcpu(3): the CPU the calling thread runs on, or -1.</summary>
    [LibraryImport(Library, EntryPoint = "sched_getcpu")]
    internal static partial int SchedGetcpu();

    /// <summary>sched_getaffinity(2) of thread <paramref name="threadId"/>: its CPU mask, <paramref name="size"/> bytes at <paramref name="mask"/>.</summary>
    [LibraryImport(Library, EntryPoint = "sched_getaffinity", SetLastError = true)]
    internal static partial int SchedGetaffinity(int threadId, nuint size, ulong* mask);

    /// <summary>sched_setaffinity(2) of thread <paramref name="threadId"/>; a queued thread moves to an allowed CPU at once.</summary>
    [LibraryImport(Library, EntryPoint = "sched_setaffinity", SetLastError = true)]
    internal static partial int SchedSetaffinity(int threadId, nuint size, ulong* mask);

    /// <summary>sched_setscheduler(2); <paramref name="threadId"/> 0 is the calling thread; its sched_param is one int.</summary>
    [LibraryImport(Library, EntryPoint = "sched_setscheduler", SetLastError = true)]
    internal static partial int SchedSetscheduler(int threadId, int policy, ref int priority);

    internal const int SCHED_OTHER = 0;
    internal const int SCHED_FIFO = 1;
    internal const int SCHED_RESET_ON_FORK = 0x40000000;

    [LibraryImport(Library, EntryPoint = "tgkill", SetLastError = true)]
    internal static partial int Tgkill(int processId, int threadId, int signal);

    [LibraryImport(Library, EntryPoint = "pthread_sigmask")]
    internal static partial int PthreadSigmask(int how, byte* set, byte* oldSet);

    [LibraryImport(Library, EntryPoint = "sigemptyset", SetLastError = true)]
    internal static partial int Sigemptyset(byte* set);

    [LibraryImport(Library, EntryPoint = "sigaddset", SetLastError = true)]
    internal static partial int Sigaddset(byte* set, int signal);

    [LibraryImport(Library, EntryPoint = "sigtimedwait", SetLastError = true)]
    internal static partial int Sigtimedwait(byte* set, void* info, Timespec* timeout);

    [LibraryImport(Library, EntryPoint = "__libc_current_sigrtmin")]
    internal static partial int CurrentSigrtmin();

    [LibraryImport(Library, EntryPoint = "strerror")]
    private static partial nint Strerror(int errno);

    /// <summary>The C library's text for <paramref name="errno"/>, e.g. "Permission denied (EACCES=13)".</summary>
    internal static string DescribeErrno(int errno)
    {
        string text = Marshal.PtrToStringUTF8(Strerror(errno)) ?? "unknown error";
        return $"{text} (errno {errno})";
    }
}
