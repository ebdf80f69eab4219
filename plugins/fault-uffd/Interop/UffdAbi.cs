using System.Runtime.InteropServices;

namespace Modular.FaultBackends.Userfaultfd;

/// <summary>
/// The userfaultfd kernel ABI (include/uapi/linux/userfaultfd.h, x86_64 and arm64 LP64): ioctl
/// numbers, flags and struct layouts. All in one place; UffdAbiTests compiles a C program against
/// the installed headers and compares every value and every size and offset here.
/// </summary>
internal static class UffdAbi
{
    /// <summary>The only userfaultfd API version (UFFD_API).</summary>
    public const ulong Api = 0xAA;

    /// <summary>userfaultfd(2) on x86_64 (SYS_userfaultfd).</summary>
    public const long SysUserfaultfdX64 = 323;

    /// <summary>userfaultfd(2) on arm64 (asm-generic numbering).</summary>
    public const long SysUserfaultfdArm64 = 282;

    // ioctl request numbers: _IOC(dir, 0xAA, nr, sizeof(struct)); dir 3 = read|write, 2 = read.

    /// <summary>UFFDIO_API = _IOWR(0xAA, 0x3F, struct uffdio_api).</summary>
    public const uint IoctlApi = 0xC018AA3F;

    /// <summary>UFFDIO_REGISTER = _IOWR(0xAA, 0x00, struct uffdio_register).</summary>
    public const uint IoctlRegister = 0xC020AA00;

    /// <summary>UFFDIO_UNREGISTER = _IOR(0xAA, 0x01, struct uffdio_range).</summary>
    public const uint IoctlUnregister = 0x8010AA01;

    /// <summary>UFFDIO_WAKE = _IOR(0xAA, 0x02, struct uffdio_range).</summary>
    public const uint IoctlWake = 0x8010AA02;

    /// <summary>UFFDIO_COPY = _IOWR(0xAA, 0x03, struct uffdio_copy).</summary>
    public const uint IoctlCopy = 0xC028AA03;

    /// <summary>UFFDIO_ZEROPAGE = _IOWR(0xAA, 0x04, struct uffdio_zeropage).</summary>
    public const uint IoctlZeropage = 0xC020AA04;

    /// <summary>USERFAULTFD_IOC_NEW = _IO(0xAA, 0x00), on /dev/userfaultfd (Linux 6.1+).</summary>
    public const uint IoctlDeviceNew = 0xAA00;

    // Bit numbers in the "ioctls" masks that UFFDIO_API and UFFDIO_REGISTER return.

    /// <summary>_UFFDIO_REGISTER.</summary>
    public const int IoctlBitRegister = 0x00;

    /// <summary>_UFFDIO_UNREGISTER.</summary>
    public const int IoctlBitUnregister = 0x01;

    /// <summary>_UFFDIO_WAKE.</summary>
    public const int IoctlBitWake = 0x02;

    /// <summary>_UFFDIO_COPY.</summary>
    public const int IoctlBitCopy = 0x03;

    /// <summary>_UFFDIO_ZEROPAGE.</summary>
    public const int IoctlBitZeropage = 0x04;

    /// <summary>UFFDIO_CONTINUE: _IOWR(0xAA, 0x07, struct uffdio_continue) (32 bytes).</summary>
    public const uint IoctlContinue = 0xC020AA07;

    /// <summary>_UFFDIO_CONTINUE.</summary>
    public const int IoctlBitContinue = 0x07;

    /// <summary>_UFFDIO_API.</summary>
    public const int IoctlBitApi = 0x3F;

    /// <summary>UFFD_FEATURE_MISSING_HUGETLBFS: MISSING registration works on hugetlbfs.</summary>
    public const ulong FeatureMissingHugetlbfs = 1UL << 4;

    /// <summary>UFFD_FEATURE_MISSING_SHMEM: MISSING registration works on shmem.</summary>
    public const ulong FeatureMissingShmem = 1UL << 5;

    /// <summary>UFFD_FEATURE_MINOR_SHMEM: MINOR registration and UFFDIO_CONTINUE work on shmem (Linux 5.14+).</summary>
    public const ulong FeatureMinorShmem = 1UL << 10;

    /// <summary>UFFD_FEATURE_THREAD_ID: page fault messages carry the faulting thread id.</summary>
    public const ulong FeatureThreadId = 1UL << 8;

    /// <summary>UFFD_FEATURE_EXACT_ADDRESS: fault addresses are not masked to the page.</summary>
    public const ulong FeatureExactAddress = 1UL << 11;

    /// <summary>UFFDIO_REGISTER_MODE_MISSING.</summary>
    public const ulong RegisterModeMissing = 1UL << 0;

    /// <summary>UFFDIO_REGISTER_MODE_MINOR: a touch of a page that the page cache holds but the range does not map faults.</summary>
    public const ulong RegisterModeMinor = 1UL << 2;

    /// <summary>UFFD_EVENT_PAGEFAULT.</summary>
    public const byte EventPagefault = 0x12;

    /// <summary>UFFD_PAGEFAULT_FLAG_WRITE.</summary>
    public const ulong PagefaultFlagWrite = 1UL << 0;

    /// <summary>UFFD_USER_MODE_ONLY (userfaultfd(2) flag). Not used: KVM vCPUs fault in kernel mode.</summary>
    public const int UserModeOnly = 1;

    /// <summary>struct uffdio_api.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct UffdioApi
    {
        public ulong Api;
        public ulong Features;
        public ulong Ioctls;
    }

    /// <summary>struct uffdio_range.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct UffdioRange
    {
        public ulong Start;
        public ulong Len;
    }

    /// <summary>struct uffdio_register.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct UffdioRegister
    {
        public UffdioRange Range;
        public ulong Mode;
        public ulong Ioctls;
    }

    /// <summary>struct uffdio_copy. <see cref="Copy"/> is written by the kernel: bytes copied, or -errno.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct UffdioCopy
    {
        public ulong Dst;
        public ulong Src;
        public ulong Len;
        public ulong Mode;
        public long Copy;
    }

    /// <summary>struct uffdio_zeropage. <see cref="Zeropage"/> is written by the kernel: bytes zeroed, or -errno.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct UffdioZeropage
    {
        public UffdioRange Range;
        public ulong Mode;
        public long Zeropage;
    }

    /// <summary>struct uffdio_continue. <see cref="Mapped"/> is written by the kernel: bytes mapped, or -errno.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct UffdioContinue
    {
        public UffdioRange Range;
        public ulong Mode;
        public long Mapped;
    }

    /// <summary>struct uffd_msg (packed, 32 bytes) with the pagefault arm of its union.</summary>
    [StructLayout(LayoutKind.Explicit, Size = 32)]
    internal struct UffdMsg
    {
        [FieldOffset(0)] public byte Event;
        [FieldOffset(8)] public ulong PagefaultFlags;
        [FieldOffset(16)] public ulong PagefaultAddress;
        [FieldOffset(24)] public uint PagefaultPtid;
    }

    /// <summary>The ioctls a MISSING-mode range must offer for the backend to work.</summary>
    /// <param name="pageSize">The range's page size: hugetlbfs ranges have no UFFDIO_ZEROPAGE.</param>
    public static ulong RequiredRangeIoctls(ulong pageSize)
    {
        ulong required = (1UL << IoctlBitCopy) | (1UL << IoctlBitWake);
        return pageSize == SmallPageSize ? required | (1UL << IoctlBitZeropage) : required;
    }

    /// <summary>The base page size this backend assumes for non-hugetlbfs ranges.</summary>
    public const ulong SmallPageSize = 4096;
}
