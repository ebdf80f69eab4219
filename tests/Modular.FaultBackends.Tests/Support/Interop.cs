using System.Runtime.InteropServices;

namespace Modular.FaultBackends.Tests.Support;

/// <summary>
/// libc calls the tests need to map memory and to touch armed memory. Touches go through memcpy
/// without SuppressGCTransition, so the faulting thread is in preemptive GC mode (DESIGN.md §5).
/// </summary>
internal static partial class Interop
{
    internal static partial class Libc
    {
        private const string Library = "libc";

        public const int PROT_READ = 0x1;
        public const int PROT_WRITE = 0x2;
        public const int MAP_SHARED = 0x01;
        public const int MAP_PRIVATE = 0x02;
        public const int MAP_ANONYMOUS = 0x20;
        public const int MAP_HUGETLB = 0x40000;
        public static readonly nint MapFailed = -1;

        [LibraryImport(Library, EntryPoint = "mmap", SetLastError = true)]
        public static partial nint Mmap(nint address, nuint length, int protection, int flags, int fd, nint offset);

        [LibraryImport(Library, EntryPoint = "memfd_create", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
        public static partial int MemfdCreate(string name, uint flags);

        [LibraryImport(Library, EntryPoint = "ftruncate", SetLastError = true)]
        public static partial int Ftruncate(int fd, long length);

        [LibraryImport(Library, EntryPoint = "close", SetLastError = true)]
        public static partial int Close(int fd);

        [LibraryImport(Library, EntryPoint = "munmap", SetLastError = true)]
        public static partial int Munmap(nint address, nuint length);
    }
}
