using System.Runtime.CompilerServices;
using Modular.Abstractions.Memory;
using Modular.Core.Interop;

namespace Modular.Core.Memory;

/// <summary>A guest-physical range backed by part of a RAM block (one KVM memory slot).</summary>
/// <param name="GuestBase">Where the range starts in guest-physical space.</param>
/// <param name="BlockOffset">Where it starts inside the block.</param>
/// <param name="Size">Length in bytes.</param>
public readonly record struct RamRegion(GuestPhysicalAddress GuestBase, ulong BlockOffset, ulong Size)
{
    /// <summary>True when [address, +length) lies inside this region.</summary>
    public bool Contains(GuestPhysicalAddress address, ulong length) =>
        address.Value >= GuestBase.Value && length <= Size && address.Value - GuestBase.Value <= Size - length;
}

/// <summary>A RAM block's shared memory: its second mapping and the memfd behind both.</summary>
/// <param name="Alias">The VMM's own mapping, never armed by postcopy.</param>
/// <param name="Memory">The memfd (for fallocate).</param>
internal sealed record SharedMemory(MappedMemory Alias, Microsoft.Win32.SafeHandles.SafeFileHandle Memory);

/// <summary>
/// One named block of guest RAM (QEMU's RAMBlock: "pc.ram"), one host mapping, addressed by
/// block offset in the migration stream. Its <see cref="Regions"/> say where it appears in
/// guest-physical space (for more than 3 GiB: below and above the 4 GiB hole). Page copies go
/// through native memcpy (DESIGN.md §5); callable from any thread.
/// </summary>
public sealed unsafe class RamBlock : IDisposable
{
    /// <summary>The target page size: dirty tracking and migration work in 4 KiB pages.</summary>
    public const int TargetPageSize = 4096;

    private static readonly byte* ZeroPage = (byte*)System.Runtime.InteropServices.NativeMemory.AllocZeroed(TargetPageSize);

    private readonly MappedMemory _mapping;
    private readonly MappedMemory? _alias;
    private readonly Microsoft.Win32.SafeHandles.SafeFileHandle? _memory;

    internal RamBlock(string name, MappedMemory mapping, ulong hostPageSize, IReadOnlyList<RamRegion> regions, SharedMemory? shared = null)
    {
        Name = name;
        _mapping = mapping;
        _alias = shared?.Alias;
        _memory = shared?.Memory;
        Size = mapping.Length;
        HostPageSize = hostPageSize;
        Regions = regions;
        VmmDirty = new DirtyBitmap((long)(Size / TargetPageSize));
    }

    /// <summary>The block id in the migration stream, e.g. "pc.ram".</summary>
    public string Name { get; }

    /// <summary>Guest-physical address of block offset 0 (the first region).</summary>
    public GuestPhysicalAddress GuestBase => Regions[0].GuestBase;

    /// <summary>Size in bytes.</summary>
    public ulong Size { get; }

    /// <summary>Host virtual address of block offset 0 (for KVM slots and the fault backend; never dereference it from managed code).</summary>
    public nint HostAddress => _mapping.DangerousGetHandle();

    /// <summary>
    /// True for shared memory (<see cref="GuestRamBacking.SharedMemfd"/>): the block has a second
    /// mapping of the same memory, for the VMM's writes while the guest's mapping is armed for postcopy.
    /// </summary>
    public bool IsShared => _alias is not null;

    /// <summary>The host page size of the mapping (4096, or 2 MiB for hugetlbfs).</summary>
    public ulong HostPageSize { get; }

    /// <summary>Number of target pages.</summary>
    public long PageCount => (long)(Size / TargetPageSize);

    /// <summary>Where the block appears in guest-physical space.</summary>
    public IReadOnlyList<RamRegion> Regions { get; }

    /// <summary>Pages the VMM itself wrote (device models, loaders): KVM never logs those.</summary>
    public DirtyBitmap VmmDirty { get; }

    /// <summary>Copies block bytes at <paramref name="offset"/> into <paramref name="destination"/> (native memcpy).</summary>
    public void CopyOut(ulong offset, Span<byte> destination)
    {
        CheckRange(offset, (ulong)destination.Length);
        Copy(offset, destination, toGuest: false);
    }

    /// <summary>Copies <paramref name="source"/> into the block at <paramref name="offset"/> (native memcpy) without marking pages dirty: for incoming migration.</summary>
    public void CopyIn(ulong offset, ReadOnlySpan<byte> source)
    {
        CheckRange(offset, (ulong)source.Length);
        fixed (byte* from = source)
        {
            Copy(offset, new Span<byte>(from, source.Length), toGuest: true);
        }
    }

    /// <summary>Marks the target pages under [offset, +length) in <see cref="VmmDirty"/>.</summary>
    public void MarkDirty(ulong offset, ulong length)
    {
        if (length == 0)
        {
            return;
        }

        CheckRange(offset, length);
        long first = (long)(offset / TargetPageSize);
        long last = (long)((offset + length - 1) / TargetPageSize);
        VmmDirty.SetRange(first, last - first + 1);
    }

    /// <summary>
    /// Drops the contents of [offset, +length): it reads as zero afterwards (MADV_DONTNEED for private
    /// memory; MADV_REMOVE for shared memory, which frees it). Both must be host-page aligned.
    /// </summary>
    public void Discard(ulong offset, ulong length) =>
        Advise("Discard", offset, length, IsShared ? Libc.MADV_REMOVE : Libc.MADV_DONTNEED, IsShared ? "MADV_REMOVE" : "MADV_DONTNEED");

    /// <summary>
    /// Removes [offset, +length) from the guest's mapping only (MADV_DONTNEED): shared memory keeps
    /// its contents, and the next touch maps them again (or, armed for postcopy, faults as minor).
    /// For private memory this is <see cref="Discard"/>. Both must be host-page aligned.
    /// </summary>
    public void Unmap(ulong offset, ulong length) => Advise("Unmap", offset, length, Libc.MADV_DONTNEED, "MADV_DONTNEED");

    /// <summary>
    /// Writes one target page through the block's second mapping (shared memory only), which postcopy
    /// never arms: for pages the fault backend then maps into the guest's mapping. A null
    /// <paramref name="page"/> (empty span) writes zeros. Native copy (DESIGN.md §5).
    /// </summary>
    /// <param name="offset">Page-aligned offset in the block.</param>
    /// <param name="page">Exactly one target page, or empty for a zero page.</param>
    internal void WriteThroughAlias(ulong offset, ReadOnlySpan<byte> page)
    {
        CheckRange(offset, TargetPageSize);
        if (_alias is null)
        {
            throw new InvalidOperationException($"RAM block {Name} is not shared memory: it has no second mapping to write through.");
        }

        if (!page.IsEmpty && page.Length != TargetPageSize)
        {
            throw new ArgumentException($"A page written to RAM block {Name} must be {TargetPageSize} bytes, not {page.Length}.", nameof(page));
        }

        bool added = false;
        _alias.DangerousAddRef(ref added);
        try
        {
            byte* target = (byte*)_alias.DangerousGetHandle() + offset;
            fixed (byte* source = page)
            {
                // SAFETY: range-checked against the live alias mapping (kept by the AddRef), which no
                // fault backend arms; source is pinned, or the static zero page for a zero page.
                if (source is not null)
                {
                    Libc.Memcpy(target, source, TargetPageSize);
                }
                else if (Libc.Memcmp(target, ZeroPage, TargetPageSize) != 0)
                {
                    Libc.Memcpy(target, ZeroPage, TargetPageSize);
                }
            }
        }
        finally
        {
            _alias.DangerousRelease();
        }
    }

    /// <summary>
    /// For a sender that hands pages to the transport by reference (<see cref="Modular.Abstractions.Transports.IGatherWriter"/>):
    /// the host address of the target page at <paramref name="offset"/>, and whether it is all zero
    /// now (compared natively with a zero page, DESIGN.md §5). Hold a <see cref="KeepMapped"/> lease
    /// until the transport has sent the page.
    /// </summary>
    /// <param name="offset">Page-aligned offset in the block.</param>
    /// <param name="zero">True when the page is all zero.</param>
    internal nint PageForSending(ulong offset, out bool zero)
    {
        zero = IsZeroPage(offset);
        return HostAddress + (nint)offset;
    }

    /// <summary>Keeps the block's mapping alive (no munmap) until the lease is disposed, even if the block is disposed meanwhile.</summary>
    internal MappingLease KeepMapped() => new(_mapping);

    /// <summary>A reference on a block's mapping; see <see cref="KeepMapped"/>.</summary>
    internal sealed class MappingLease : IDisposable
    {
        private MappedMemory? _mapping;

        internal MappingLease(MappedMemory mapping)
        {
            bool added = false;
            mapping.DangerousAddRef(ref added);
            _mapping = mapping;
        }

        /// <summary>Releases the reference (once).</summary>
        public void Dispose() => Interlocked.Exchange(ref _mapping, null)?.DangerousRelease();
    }

    /// <summary>True when the target page at <paramref name="offset"/> is all zero: compared natively with a zero page (DESIGN.md §5), reading nothing else.</summary>
    public bool IsZeroPage(ulong offset)
    {
        CheckRange(offset, TargetPageSize);
        bool added = false;
        _mapping.DangerousAddRef(ref added);
        try
        {
            // SAFETY: range-checked, and the AddRef keeps the mapping alive; a native compare, so a
            // fault on an armed page blocks this thread in preemptive mode (§5).
            return Libc.Memcmp((byte*)HostAddress + offset, ZeroPage, TargetPageSize) == 0;
        }
        finally
        {
            _mapping.DangerousRelease();
        }
    }

    /// <summary>
    /// Faults every page of the block in now (MADV_POPULATE_WRITE; shared memory is allocated with
    /// fallocate first), so that a destination pays the kernel's page allocation and zeroing while it
    /// waits rather than while pages stream in. Pages already
    /// present are left as they are. Returns false when the kernel lacks the advice (before 5.14).
    /// Works in 64 MiB steps and stops early (returning true) once <paramref name="cancellationToken"/>
    /// is cancelled.
    /// </summary>
    /// <param name="cancellationToken">Stops populating between steps.</param>
    /// <param name="memoryOnly">
    /// For shared memory: populate the memory through the second mapping and leave the guest's
    /// mapping empty (a postcopy destination maps each page when it arrives). Ignored otherwise.
    /// </param>
    public bool Populate(CancellationToken cancellationToken = default, bool memoryOnly = false)
    {
        const ulong step = 64UL << 20;
        MappedMemory mapping = memoryOnly && _alias is not null ? _alias : _mapping;
        bool added = false;
        mapping.DangerousAddRef(ref added);
        try
        {
            nint start = mapping.DangerousGetHandle();
            for (ulong at = 0; at < Size && !cancellationToken.IsCancellationRequested; at += step)
            {
                ulong length = Math.Min(step, Size - at);
                // Shared memory: allocate the pages first (measured here for 1 GiB: fallocate and then
                // mapping the present pages, 0.75 s; MADV_POPULATE_WRITE alone, 1-1.9 s).
                if (_memory is not null)
                {
                    _ = Libc.Fallocate(_memory, 0, (long)at, (long)length);
                }

                if (Libc.Madvise(start + (nint)at, (nuint)length, Libc.MADV_POPULATE_WRITE) != 0)
                {
                    return false;
                }
            }

            return true;
        }
        finally
        {
            mapping.DangerousRelease();
        }
    }

    /// <summary>Advises transparent huge pages for the block (MADV_HUGEPAGE); harmless when the kernel has none.</summary>
    public void AdviseTransparentHugePages()
    {
        _ = Libc.Madvise(HostAddress, (nuint)Size, Libc.MADV_HUGEPAGE);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _mapping.Dispose();
        _alias?.Dispose();
        _memory?.Dispose();
    }

    private void Advise(string operation, ulong offset, ulong length, int advice, string name)
    {
        CheckRange(offset, length);
        if (offset % HostPageSize != 0 || length % HostPageSize != 0)
        {
            throw new ArgumentException($"{operation} of {Name} offset 0x{offset:x} length 0x{length:x} is not aligned to the host page size {HostPageSize}.");
        }

        bool added = false;
        _mapping.DangerousAddRef(ref added);
        try
        {
            if (Libc.Madvise(HostAddress + (nint)offset, (nuint)length, advice) != 0)
            {
                int errno = System.Runtime.InteropServices.Marshal.GetLastPInvokeError();
                throw new IOException($"madvise({name}) on RAM block {Name} offset 0x{offset:x} length 0x{length:x} failed: {Libc.DescribeErrno(errno)}.");
            }
        }
        finally
        {
            _mapping.DangerousRelease();
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // every page a migration moves comes through here (see RamSaver.SendPage)
    private void Copy(ulong offset, Span<byte> buffer, bool toGuest)
    {
        if (buffer.IsEmpty)
        {
            return;
        }

        bool added = false;
        _mapping.DangerousAddRef(ref added);
        try
        {
            fixed (byte* local = buffer)
            {
                byte* guest = (byte*)HostAddress + offset;
                // SAFETY: [offset, +length) was range-checked against the live mapping, which the
                // AddRef keeps mapped; the copy is a native call so a fault on an armed page blocks
                // this thread in preemptive mode (DESIGN.md §5).
                if (toGuest)
                {
                    Libc.Memcpy(guest, local, (nuint)buffer.Length);
                }
                else
                {
                    Libc.Memcpy(local, guest, (nuint)buffer.Length);
                }
            }
        }
        finally
        {
            _mapping.DangerousRelease();
        }
    }

    private void CheckRange(ulong offset, ulong length)
    {
        if (offset > Size || length > Size - offset)
        {
            throw new ArgumentOutOfRangeException(nameof(offset), $"Range 0x{offset:x}+0x{length:x} is outside RAM block {Name} (0x{Size:x} bytes).");
        }
    }
}
