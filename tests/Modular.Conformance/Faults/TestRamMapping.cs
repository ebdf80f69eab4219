using System.Runtime.InteropServices;
using Modular.Abstractions.Faults;

namespace Modular.Conformance.Faults;

/// <summary>
/// Private anonymous memory standing in for guest RAM in the fault backend tests; unmapped on
/// dispose. Only native code touches it (<see cref="NativeToucher"/>).
/// </summary>
public sealed class TestRamMapping : IDisposable
{
    private int _disposed;

    private TestRamMapping(nint address, ulong length, ulong pageSize)
    {
        Address = address;
        Length = length;
        PageSize = pageSize;
    }

    /// <summary>Start of the mapping.</summary>
    public nint Address { get; }

    /// <summary>Length in bytes.</summary>
    public ulong Length { get; }

    /// <summary>The page size of the mapping.</summary>
    public ulong PageSize { get; }

    /// <summary>The range to arm.</summary>
    public HostRamRange Range => new(Address, Length, PageSize);

    /// <summary>The address of page <paramref name="index"/>.</summary>
    /// <param name="index">Page number from the start of the mapping.</param>
    public nint Page(int index) => Address + (nint)((ulong)index * PageSize);

    /// <summary>Maps <paramref name="pages"/> pages of the system page size, private and anonymous.</summary>
    /// <param name="pages">How many pages.</param>
    public static TestRamMapping Anonymous(int pages)
    {
        ulong pageSize = (ulong)Environment.SystemPageSize;
        ulong length = (ulong)pages * pageSize;
        nint address = Interop.Libc.Mmap(0, (nuint)length, Interop.Libc.PROT_READ | Interop.Libc.PROT_WRITE,
            Interop.Libc.MAP_PRIVATE | Interop.Libc.MAP_ANONYMOUS, -1, 0);
        if (address == Interop.Libc.MapFailed)
        {
            throw new InvalidOperationException($"mmap of {length} bytes of test RAM failed: errno {Marshal.GetLastPInvokeError()}.");
        }

        return new TestRamMapping(address, length, pageSize);
    }

    /// <summary>Unmaps the memory (once).</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 0)
        {
            Interop.Libc.Munmap(Address, (nuint)Length);
        }
    }
}
