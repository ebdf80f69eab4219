using System.Runtime.InteropServices;
using Modular.Abstractions.Faults;

namespace Modular.FaultBackends.Tests.Support;

/// <summary>A private anonymous mapping (optionally hugetlbfs) for a test; unmapped on dispose.</summary>
internal sealed class TestMapping : IDisposable
{
    private TestMapping(nint address, ulong length, ulong pageSize)
    {
        Address = address;
        Length = length;
        PageSize = pageSize;
    }

    public nint Address { get; }

    public ulong Length { get; }

    public ulong PageSize { get; }

    public HostRamRange Range => new(Address, Length, PageSize);

    public nint Page(int index) => Address + (nint)((ulong)index * PageSize);

    public static TestMapping Anonymous(int pages) => Map(pages, 4096, 0);

    /// <summary>Maps 2 MiB hugetlbfs pages, or returns null with the errno when none can be had.</summary>
    public static TestMapping? TryHuge(int pages, out int errno)
    {
        const ulong huge = 2 * 1024 * 1024;
        nint address = Interop.Libc.Mmap(0, (nuint)((ulong)pages * huge), Interop.Libc.PROT_READ | Interop.Libc.PROT_WRITE,
            Interop.Libc.MAP_PRIVATE | Interop.Libc.MAP_ANONYMOUS | Interop.Libc.MAP_HUGETLB, -1, 0);
        errno = address == Interop.Libc.MapFailed ? Marshal.GetLastPInvokeError() : 0;
        return address == Interop.Libc.MapFailed ? null : new TestMapping(address, (ulong)pages * huge, huge);
    }

    /// <summary>
    /// A memfd of <paramref name="pages"/> 4 KiB pages mapped shared twice: this mapping (the one a
    /// test arms) and <paramref name="alias"/> (never armed, so tests may write it directly). Both
    /// are unmapped on dispose.
    /// </summary>
    public static TestMapping SharedMemfd(int pages, out nint alias)
    {
        ulong length = (ulong)pages * 4096;
        int fd = Interop.Libc.MemfdCreate("uffd-test", 1);
        if (fd < 0 || Interop.Libc.Ftruncate(fd, (long)length) != 0)
        {
            throw new InvalidOperationException($"memfd of {length} bytes failed: errno {Marshal.GetLastPInvokeError()}");
        }

        try
        {
            nint guest = Interop.Libc.Mmap(0, (nuint)length, Interop.Libc.PROT_READ | Interop.Libc.PROT_WRITE, Interop.Libc.MAP_SHARED, fd, 0);
            alias = Interop.Libc.Mmap(0, (nuint)length, Interop.Libc.PROT_READ | Interop.Libc.PROT_WRITE, Interop.Libc.MAP_SHARED, fd, 0);
            if (guest == Interop.Libc.MapFailed || alias == Interop.Libc.MapFailed)
            {
                throw new InvalidOperationException($"mmap of the memfd failed: errno {Marshal.GetLastPInvokeError()}");
            }

            return new TestMapping(guest, length, 4096) { _alias = alias };
        }
        finally
        {
            _ = Interop.Libc.Close(fd);
        }
    }

    private static TestMapping Map(int pages, ulong pageSize, int extraFlags)
    {
        ulong length = (ulong)pages * pageSize;
        nint address = Interop.Libc.Mmap(0, (nuint)length, Interop.Libc.PROT_READ | Interop.Libc.PROT_WRITE,
            Interop.Libc.MAP_PRIVATE | Interop.Libc.MAP_ANONYMOUS | extraFlags, -1, 0);
        if (address == Interop.Libc.MapFailed)
        {
            throw new InvalidOperationException($"mmap of {length} bytes failed: errno {Marshal.GetLastPInvokeError()}");
        }
        return new TestMapping(address, length, pageSize);
    }

    private nint _alias;

    public void Dispose()
    {
        Interop.Libc.Munmap(Address, (nuint)Length);
        if (_alias != 0)
        {
            Interop.Libc.Munmap(_alias, (nuint)Length);
        }
    }
}
