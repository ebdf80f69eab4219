using System.Globalization;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using Modular.Abstractions.Memory;
using Modular.Core.Interop;

namespace Modular.Core.Memory;

/// <summary>
/// Guest RAM: named blocks mapped with mmap. Layout (as QEMU's pc machine): one block "pc.ram" of
/// the whole size. Up to 3 GiB it appears at GPA 0; above that it is split into two regions (two
/// KVM slots) of the same block: [0, 3 GiB) at GPA 0 and the rest at GPA 4 GiB, leaving the
/// 3-4 GiB hole for devices. Migration addresses pages by block offset, so the split never shows on
/// the wire. Read and Write copy with native memcpy; Write marks the pages in the block's
/// VMM-side dirty bitmap. Thread-safe; dirty sync belongs to the migration thread.
/// </summary>
public sealed class GuestRam : IGuestMemory, IDisposable
{
    /// <summary>The block id QEMU's pc machine uses for main RAM.</summary>
    public const string MainBlockName = "pc.ram";

    /// <summary>RAM above this much is placed from <see cref="HighRamBase"/>.</summary>
    public const ulong LowRamLimit = 3UL << 30;

    /// <summary>Where RAM beyond <see cref="LowRamLimit"/> appears in guest-physical space.</summary>
    public const ulong HighRamBase = 4UL << 30;

    private const ulong HugePageSize = 2UL << 20;
    private const string NrHugepagesPath = "/proc/sys/vm/nr_hugepages";
    private const string FreeHugepages2MPath = "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages";

    private readonly RamBlock[] _blocks;
    private IGuestDirtyLog? _dirtyLog;

    private GuestRam(RamBlock[] blocks)
    {
        _blocks = blocks;
    }

    /// <summary>The RAM blocks.</summary>
    public IReadOnlyList<RamBlock> Blocks => _blocks;

    /// <inheritdoc />
    public ulong Size => _blocks.Aggregate(0UL, (sum, b) => sum + b.Size);

    /// <inheritdoc />
    public int PageSize => RamBlock.TargetPageSize;

    /// <summary>Maps <paramref name="size"/> bytes of guest RAM as block "pc.ram".</summary>
    /// <param name="size">Bytes; a multiple of the page size (4 KiB, or 2 MiB with huge pages).</param>
    /// <param name="backing">Anonymous memory or 2 MiB hugetlbfs.</param>
    /// <exception cref="GuestRamAllocationException">Bad size, no huge pages reserved, or the host cannot give that much memory.</exception>
    public static GuestRam Create(ulong size, GuestRamBacking backing = GuestRamBacking.Anonymous)
    {
        ulong pageSize = backing switch
        {
            GuestRamBacking.Anonymous or GuestRamBacking.SharedMemfd => RamBlock.TargetPageSize,
            GuestRamBacking.HugeTlb2M => HugePageSize,
            _ => throw new ArgumentOutOfRangeException(nameof(backing), backing, "Choose Anonymous, HugeTlb2M or SharedMemfd guest RAM backing."),
        };
        string pageText = pageSize == HugePageSize ? "2 MiB huge page" : "4 KiB page";
        if (size == 0 || size % pageSize != 0)
        {
            throw new GuestRamAllocationException(
                $"Guest RAM size {size} bytes ({Mib(size)}) is not a positive multiple of the {pageText} size ({pageSize} bytes): choose a size such as {Mib(Math.Max(pageSize, size / pageSize * pageSize))}.");
        }

        RamRegion[] regions = size <= LowRamLimit
            ? [new RamRegion(new GuestPhysicalAddress(0), 0, size)]
            : [new RamRegion(new GuestPhysicalAddress(0), 0, LowRamLimit), new RamRegion(new GuestPhysicalAddress(HighRamBase), LowRamLimit, size - LowRamLimit)];
        if (backing == GuestRamBacking.SharedMemfd)
        {
            (MappedMemory guest, MappedMemory alias, SafeFileHandle memory) = MapSharedMemfd(size);
            return new GuestRam([new RamBlock(MainBlockName, guest, pageSize, regions, new SharedMemory(alias, memory))]);
        }

        int flags = Libc.MAP_PRIVATE | Libc.MAP_ANONYMOUS;
        if (backing == GuestRamBacking.HugeTlb2M)
        {
            CheckHugePagesReserved(size);
            flags |= Libc.MAP_HUGETLB | Libc.MAP_HUGE_2MB;
        }
        else
        {
            flags |= Libc.MAP_NORESERVE;
        }

        nint address = Libc.Mmap(0, (nuint)size, Libc.PROT_READ | Libc.PROT_WRITE, flags, -1, 0);
        if (address == Libc.MAP_FAILED)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new GuestRamAllocationException(
                $"The host cannot give {Mib(size)} of guest RAM for block {MainBlockName} ({(backing == GuestRamBacking.HugeTlb2M ? "2 MiB huge pages" : "anonymous memory")}): mmap failed with {Libc.DescribeErrno(errno)}. Choose less memory or free some on the host.");
        }

        var mapping = new MappedMemory(address, size);
        return new GuestRam([new RamBlock(MainBlockName, mapping, pageSize, regions)]);
    }

    /// <summary>A memfd of <paramref name="size"/> bytes mapped shared twice (the guest's mapping, the VMM's alias); the descriptor stays open for populating.</summary>
    private static (MappedMemory Guest, MappedMemory Alias, SafeFileHandle Memory) MapSharedMemfd(ulong size)
    {
        int fd = Libc.MemfdCreate("modular-" + MainBlockName, Libc.MFD_CLOEXEC);
        if (fd < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new GuestRamAllocationException(
                $"Cannot create shared memory for guest RAM block {MainBlockName} (memfd_create failed with {Libc.DescribeErrno(errno)}). Use anonymous guest RAM (machine.memory-backend anonymous).");
        }

        var memory = new SafeFileHandle(fd, ownsHandle: true);
        MappedMemory? guest = null;
        try
        {
            if (Libc.Ftruncate(fd, (long)size) != 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                throw new GuestRamAllocationException(
                    $"Cannot size shared memory for {Mib(size)} of guest RAM (ftruncate failed with {Libc.DescribeErrno(errno)}). Choose less memory or use anonymous guest RAM.");
            }

            guest = MapShared(fd, size, "the guest's mapping");
            return (guest, MapShared(fd, size, "the VMM's second mapping"), memory);
        }
        catch
        {
            guest?.Dispose();
            memory.Dispose();
            throw;
        }
    }

    private static MappedMemory MapShared(int fd, ulong size, string which)
    {
        nint address = Libc.Mmap(0, (nuint)size, Libc.PROT_READ | Libc.PROT_WRITE, Libc.MAP_SHARED, fd, 0);
        if (address == Libc.MAP_FAILED)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new GuestRamAllocationException(
                $"Cannot map {Mib(size)} of shared guest RAM for block {MainBlockName} ({which}): mmap failed with {Libc.DescribeErrno(errno)}. Choose less memory or free some on the host.");
        }

        return new MappedMemory(address, size);
    }

    /// <summary>The block named <paramref name="name"/> (e.g. "pc.ram").</summary>
    /// <exception cref="KeyNotFoundException">No such block; the message lists the blocks there are.</exception>
    public RamBlock GetBlock(string name) =>
        Array.Find(_blocks, b => b.Name == name)
        ?? throw new KeyNotFoundException($"There is no RAM block '{name}'; blocks: {string.Join(", ", _blocks.Select(b => b.Name))}.");

    /// <inheritdoc />
    public bool Contains(GuestPhysicalAddress address, ulong length) => TryResolve(address, length, out _, out _);

    /// <inheritdoc />
    public void Read(GuestPhysicalAddress address, Span<byte> destination)
    {
        (RamBlock block, ulong offset) = Resolve(address, (ulong)destination.Length);
        block.CopyOut(offset, destination);
    }

    /// <inheritdoc />
    public void Write(GuestPhysicalAddress address, ReadOnlySpan<byte> source)
    {
        (RamBlock block, ulong offset) = Resolve(address, (ulong)source.Length);
        block.CopyIn(offset, source);
        block.MarkDirty(offset, (ulong)source.Length);
    }

    /// <summary>Translates a guest-physical range that lies in one region to its block and block offset.</summary>
    public bool TryResolve(GuestPhysicalAddress address, ulong length, out RamBlock block, out ulong offset)
    {
        foreach (RamBlock candidate in _blocks)
        {
            foreach (RamRegion region in candidate.Regions)
            {
                if (region.Contains(address, length))
                {
                    block = candidate;
                    offset = region.BlockOffset + (address.Value - region.GuestBase.Value);
                    return true;
                }
            }
        }

        block = null!;
        offset = 0;
        return false;
    }

    /// <summary>
    /// Sync dirty bitmap: ORs into <paramref name="into"/> (one bit per page of
    /// <paramref name="block"/>) every page the guest wrote since the last sync (KVM's dirty log,
    /// fetched and then re-protected with KVM_CLEAR_DIRTY_LOG) and every page the VMM wrote (taken
    /// out of <see cref="RamBlock.VmmDirty"/>). Returns the number of bits now set in
    /// <paramref name="into"/>. Migration thread.
    /// </summary>
    /// <param name="block">The RAM block.</param>
    /// <param name="into">Its bitmap.</param>
    /// <param name="rearm">
    /// False for the last sync of a migration, with the vCPUs stopped for good: the guest's pages
    /// are not re-protected (KVM_CLEAR_DIRTY_LOG write-protects every page it clears, which costs
    /// tens of milliseconds for a guest that dirtied a gigabyte, inside the downtime), so the next
    /// sync reports them again.
    /// </param>
    public long SyncDirtyBitmap(RamBlock block, DirtyBitmap into, bool rearm = true)
    {
        ArgumentNullException.ThrowIfNull(block);
        ArgumentNullException.ThrowIfNull(into);
        if (into.Length != block.PageCount)
        {
            throw new ArgumentException($"The bitmap has {into.Length} bits but RAM block {block.Name} has {block.PageCount} pages.", nameof(into));
        }

        _dirtyLog?.CollectInto(block, into, rearm);
        block.VmmDirty.DrainInto(into);
        return into.Count();
    }

    /// <summary>Connects the accelerator's dirty log (KVM) so <see cref="SyncDirtyBitmap"/> includes guest writes.</summary>
    internal void AttachDirtyLog(IGuestDirtyLog dirtyLog) => _dirtyLog = dirtyLog;

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (RamBlock block in _blocks)
        {
            block.Dispose();
        }
    }

    private (RamBlock Block, ulong Offset) Resolve(GuestPhysicalAddress address, ulong length)
    {
        if (!TryResolve(address, length, out RamBlock block, out ulong offset))
        {
            throw new ArgumentOutOfRangeException(nameof(address), $"Guest range {address}+0x{length:x} is not inside guest RAM ({Describe()}).");
        }

        return (block, offset);
    }

    private string Describe() => string.Join(", ", _blocks.SelectMany(b => b.Regions.Select(r =>
        $"{b.Name} {r.GuestBase}-0x{r.GuestBase.Value + r.Size - 1:x}")));

    private static void CheckHugePagesReserved(ulong size)
    {
        ulong needed = size / HugePageSize;
        long reserved = ReadNumber(NrHugepagesPath);
        if (reserved <= 0)
        {
            throw new GuestRamAllocationException(
                $"Guest RAM wants 2 MiB huge pages, but none are reserved ({NrHugepagesPath} is {Math.Max(reserved, 0)}). Reserve at least {needed} with `echo {needed} > {NrHugepagesPath}` as root, or use anonymous memory.");
        }

        long free = File.Exists(FreeHugepages2MPath) ? ReadNumber(FreeHugepages2MPath) : reserved;
        if ((ulong)Math.Max(free, 0) < needed)
        {
            throw new GuestRamAllocationException(
                $"Guest RAM of {Mib(size)} needs {needed} free 2 MiB huge pages, but only {free} of {reserved} reserved are free ({FreeHugepages2MPath}). Reserve more in {NrHugepagesPath}, choose less memory, or use anonymous memory.");
        }
    }

    private static long ReadNumber(string path)
    {
        try
        {
            return long.Parse(File.ReadAllText(path).Trim(), CultureInfo.InvariantCulture);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException)
        {
            return 0;
        }
    }

    private static string Mib(ulong bytes) => bytes % (1UL << 20) == 0
        ? $"{bytes >> 20} MiB"
        : $"{bytes / 1048576.0:0.###} MiB";
}
