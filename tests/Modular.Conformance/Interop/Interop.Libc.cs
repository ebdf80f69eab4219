using System.Runtime.InteropServices;

namespace Modular.Conformance;

/// <summary>
/// The libc calls the kit needs: map test memory, and copy to or from memory that a fault backend
/// may have armed. memcpy is imported without SuppressGCTransition, so a thread that faults inside
/// it waits in preemptive GC mode and never stalls a garbage collection (DESIGN.md §5).
/// </summary>
internal static partial class Interop
{
    internal static partial class Libc
    {
        private const string Library = "libc";

        public const int PROT_READ = 0x1;
        public const int PROT_WRITE = 0x2;
        public const int MAP_PRIVATE = 0x02;
        public const int MAP_ANONYMOUS = 0x20;
        public static readonly nint MapFailed = -1;

        [LibraryImport(Library, EntryPoint = "mmap", SetLastError = true)]
        public static partial nint Mmap(nint address, nuint length, int protection, int flags, int fd, nint offset);

        [LibraryImport(Library, EntryPoint = "munmap", SetLastError = true)]
        public static partial int Munmap(nint address, nuint length);

        [LibraryImport(Library, EntryPoint = "memcpy", SetLastError = true)]
        public static partial nint Memcpy(nint destination, nint source, nuint count);

        [LibraryImport(Library, EntryPoint = "gettid", SetLastError = true)]
        public static partial int Gettid();
    }
}
