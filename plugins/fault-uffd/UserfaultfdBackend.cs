using System.Globalization;
using System.Runtime.InteropServices;
using Modular.Abstractions.Faults;
using static Modular.FaultBackends.Userfaultfd.Interop.Libc;

namespace Modular.FaultBackends.Userfaultfd;

/// <summary>
/// One userfaultfd for one incoming migration: arms guest RAM ranges in MISSING mode (and shared
/// ranges in MISSING and MINOR mode), delivers page faults (<see cref="ReadFaults"/>, fault thread)
/// and places pages atomically with UFFDIO_COPY / UFFDIO_ZEROPAGE, or maps shared pages with
/// UFFDIO_CONTINUE (listen thread and fault thread). Split by concern: this file holds the lifecycle
/// and arming, UserfaultfdBackend.Faults.cs the fault reading, UserfaultfdBackend.Placement.cs the
/// page placement.
/// </summary>
internal sealed partial class UserfaultfdBackend : IFaultBackend, ISharedRamFaultBackend
{
    private readonly FileDescriptorHandle _uffd;
    private readonly FileDescriptorHandle _shutdownEvent;
    private readonly Lock _rangesLock = new();
    private readonly List<HostRamRange> _armed = new();
    private nint _hugeZeroPage;
    private ulong _hugeZeroPageSize;
    private volatile bool _shutdown;
    private int _disposed;

    private UserfaultfdBackend(FileDescriptorHandle uffd, FileDescriptorHandle shutdownEvent, UffdCapabilities capabilities)
    {
        _uffd = uffd;
        _shutdownEvent = shutdownEvent;
        Capabilities = capabilities;
    }

    /// <summary>What the kernel offered this descriptor.</summary>
    public UffdCapabilities Capabilities { get; }

    /// <summary>Opens a userfaultfd and its shutdown eventfd. Any thread.</summary>
    /// <param name="only">Restrict to one open path (tests), or <see cref="UffdOpenPath.Invalid"/> for both.</param>
    /// <exception cref="FaultBackendException">userfaultfd is not usable; the message says why.</exception>
    public static UserfaultfdBackend Open(UffdOpenPath only = UffdOpenPath.Invalid)
    {
        FileDescriptorHandle uffd = UserfaultfdOpener.Open(only, out UffdCapabilities capabilities);
        FileDescriptorHandle shutdownEvent = Eventfd(EFD_CLOEXEC | EFD_NONBLOCK, out int errno);
        if (shutdownEvent.IsInvalid)
        {
            shutdownEvent.Dispose();
            uffd.Dispose();
            throw new FaultBackendException($"Could not create the eventfd that stops the userfaultfd fault thread: {Describe(errno)}.");
        }
        return new UserfaultfdBackend(uffd, shutdownEvent, capabilities);
    }

    /// <inheritdoc />
    /// <remarks>Destination main thread, before LISTEN completes. Takes the ranges lock.</remarks>
    public void Arm(HostRamRange range) => Register(range, shared: false);

    /// <inheritdoc />
    public string? SharedRamUnavailableReason => Capabilities.MinorShmemEnabled
        ? null
        : "this kernel's userfaultfd has no minor faults on shared memory (UFFD_FEATURE_MINOR_SHMEM and UFFDIO_CONTINUE, Linux 5.14+)";

    /// <inheritdoc />
    /// <remarks>
    /// Destination main thread, before LISTEN completes. Registers MISSING and MINOR together: a page
    /// that the shared memory does not hold yet faults as missing, one it holds but the range does
    /// not map faults as minor; both are resolved by <see cref="MapPages"/> once the engine has
    /// written the page through its own mapping.
    /// </remarks>
    public void ArmShared(HostRamRange range)
    {
        if (SharedRamUnavailableReason is { } reason)
        {
            throw new FaultBackendException($"Cannot arm shared guest RAM at 0x{range.HostAddress:x}: {reason}. Use anonymous guest RAM (machine.memory-backend anonymous) for postcopy here.");
        }

        Register(range, shared: true);
    }

    private unsafe void Register(HostRamRange range, bool shared)
    {
        ObjectDisposedException.ThrowIf(_disposed != 0, this);
        ValidateRange(range, "arm");
        bool huge = range.PageSize != UffdAbi.SmallPageSize;
        if (huge && !Capabilities.HugetlbfsSupported)
        {
            throw new FaultBackendException(
                $"Cannot arm guest RAM at 0x{range.HostAddress:x} with {range.PageSize}-byte pages: this kernel's userfaultfd " +
                "does not support hugetlbfs (no UFFD_FEATURE_MISSING_HUGETLBFS). Back guest RAM with 4 KiB pages for postcopy.");
        }

        lock (_rangesLock)
        {
            if (huge)
            {
                EnsureHugeZeroPage(range.PageSize);
            }
            UffdAbi.UffdioRegister register = new()
            {
                Range = new UffdAbi.UffdioRange { Start = (ulong)range.HostAddress, Len = range.Length },
                Mode = shared ? UffdAbi.RegisterModeMissing | UffdAbi.RegisterModeMinor : UffdAbi.RegisterModeMissing,
            };
            // SAFETY: register is a local uffdio_register; the kernel reads the range and mode and writes ioctls.
            int errno = Ioctl(_uffd, UffdAbi.IoctlRegister, &register);
            if (errno != 0)
            {
                throw new FaultBackendException(DescribeRegisterFailure(range, errno));
            }
            ulong required = shared ? (1UL << UffdAbi.IoctlBitContinue) | (1UL << UffdAbi.IoctlBitWake) : UffdAbi.RequiredRangeIoctls(range.PageSize);
            if ((register.Ioctls & required) != required)
            {
                Unregister(range);
                throw new FaultBackendException(
                    $"userfaultfd armed guest RAM at 0x{range.HostAddress:x} (+0x{range.Length:x}) but offers only ioctl mask " +
                    $"0x{register.Ioctls:x} there; postcopy needs {(shared ? "UFFDIO_CONTINUE and UFFDIO_WAKE" : "UFFDIO_COPY, UFFDIO_WAKE" + (huge ? "" : " and UFFDIO_ZEROPAGE"))} " +
                    $"(mask 0x{required:x}). Use anonymous or hugetlbfs memory for guest RAM.");
            }
            _armed.Add(range);
        }
    }

    /// <inheritdoc />
    /// <remarks>Any thread; takes the ranges lock. The kernel wakes threads blocked in the range.</remarks>
    public void Disarm(HostRamRange range)
    {
        ObjectDisposedException.ThrowIf(_disposed != 0, this);
        ValidateRange(range, "disarm");
        lock (_rangesLock)
        {
            if (!_armed.Remove(range))
            {
                throw new ArgumentException(
                    $"The range at 0x{range.HostAddress:x} (+0x{range.Length:x}) was never armed on this userfaultfd; disarm exactly the ranges given to Arm.",
                    nameof(range));
            }
            Unregister(range);
        }
    }

    private unsafe void Unregister(HostRamRange range)
    {
        UffdAbi.UffdioRange unregister = new() { Start = (ulong)range.HostAddress, Len = range.Length };
        // SAFETY: unregister is a local uffdio_range that the kernel only reads.
        int errno = Ioctl(_uffd, UffdAbi.IoctlUnregister, &unregister);
        if (errno != 0)
        {
            throw new FaultBackendException(
                $"Disarming guest RAM at 0x{range.HostAddress:x} (+0x{range.Length:x}) failed (UFFDIO_UNREGISTER): {Describe(errno)}.");
        }
    }

    private static void ValidateRange(HostRamRange range, string operation)
    {
        bool pageSizeOk = range.PageSize != 0 && (range.PageSize & (range.PageSize - 1)) == 0 && range.PageSize >= UffdAbi.SmallPageSize;
        if (!pageSizeOk || range.Length == 0 || range.Length % range.PageSize != 0 || (ulong)range.HostAddress % range.PageSize != 0)
        {
            throw new ArgumentException(
                string.Create(CultureInfo.InvariantCulture,
                    $"Cannot {operation} host range 0x{range.HostAddress:x} (+0x{range.Length:x}, page size {range.PageSize}): start and length must be non-zero multiples of a power-of-two page size of at least 4096."),
                nameof(range));
        }
    }

    private static string DescribeRegisterFailure(HostRamRange range, int errno)
    {
        string where = $"guest RAM at 0x{range.HostAddress:x} (+0x{range.Length:x}, {range.PageSize}-byte pages)";
        return errno switch
        {
            EINVAL => $"userfaultfd refused to arm {where} (UFFDIO_REGISTER: {Describe(errno)}): the range must be one private " +
                      "anonymous, shmem or hugetlbfs mapping, mapped in full and aligned to its page size, and not already armed.",
            EBUSY => $"userfaultfd refused to arm {where}: it is already armed by another userfaultfd ({Describe(errno)}).",
            ENOMEM => $"userfaultfd refused to arm {where}: part of the range is not mapped ({Describe(errno)}).",
            _ => $"userfaultfd refused to arm {where} (UFFDIO_REGISTER): {Describe(errno)}.",
        };
    }

    private void EnsureHugeZeroPage(ulong pageSize)
    {
        // hugetlbfs has no UFFDIO_ZEROPAGE: a zero huge page is placed with UFFDIO_COPY from this
        // zero-filled buffer. Allocated at arm time so that placement never allocates.
        if (_hugeZeroPage != 0 && _hugeZeroPageSize >= pageSize)
        {
            return;
        }
        if (_hugeZeroPage != 0)
        {
            FreeHugeZeroPage();
        }
        unsafe
        {
            // SAFETY: a fresh native allocation owned by this object and freed in Dispose.
            _hugeZeroPage = (nint)NativeMemory.AllocZeroed((nuint)pageSize);
        }
        _hugeZeroPageSize = pageSize;
    }

    private void FreeHugeZeroPage()
    {
        unsafe
        {
            // SAFETY: _hugeZeroPage came from NativeMemory.AllocZeroed and is freed once (then zeroed).
            NativeMemory.Free((void*)_hugeZeroPage);
        }
        _hugeZeroPage = 0;
        _hugeZeroPageSize = 0;
    }

    /// <summary>
    /// Stops the fault thread and closes the userfaultfd. Closing releases every armed range and
    /// wakes every thread still waiting on it (their accesses then see empty memory). Any thread.
    /// </summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        SignalShutdown();
        // A ReadFaults still inside poll/read holds references on both handles: the close waits for it.
        _uffd.Dispose();
        _shutdownEvent.Dispose();
        lock (_rangesLock)
        {
            _armed.Clear();
            if (_hugeZeroPage != 0)
            {
                FreeHugeZeroPage();
            }
        }
    }
}
