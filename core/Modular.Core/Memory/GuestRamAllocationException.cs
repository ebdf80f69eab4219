namespace Modular.Core.Memory;

/// <summary>Guest RAM could not be set up: bad size, no huge pages reserved, or the host refused the mapping. The message says what to change.</summary>
public sealed class GuestRamAllocationException : Exception
{
    /// <summary>Creates the exception with a complete user-facing message.</summary>
    public GuestRamAllocationException(string message)
        : base(message)
    {
    }
}

/// <summary>How guest RAM is backed on the host.</summary>
public enum GuestRamBacking
{
    /// <summary>Not a valid choice.</summary>
    Invalid = 0,

    /// <summary>Anonymous private memory (MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE), 4 KiB pages.</summary>
    Anonymous = 1,

    /// <summary>2 MiB hugetlbfs pages (MAP_HUGETLB|MAP_HUGE_2MB); they must be reserved in /proc/sys/vm/nr_hugepages first.</summary>
    HugeTlb2M = 2,

    /// <summary>
    /// Shared memory (a memfd, QEMU's memory-backend-memfd), 4 KiB pages, mapped twice: once for the
    /// guest and once for the VMM's own writes. A postcopy destination fills pages through the second
    /// mapping and maps them into the guest's with minor faults (UFFDIO_CONTINUE), and can fault all
    /// of its RAM in while it waits for the source.
    /// </summary>
    SharedMemfd = 3,
}

/// <summary>A source of pages the guest wrote behind the VMM's back (KVM's dirty log).</summary>
internal interface IGuestDirtyLog
{
    /// <summary>Adds the pages of <paramref name="block"/> the guest dirtied since the last call to <paramref name="into"/>, and re-arms logging for them unless <paramref name="rearm"/> is false. Migration thread.</summary>
    void CollectInto(RamBlock block, DirtyBitmap into, bool rearm);
}
