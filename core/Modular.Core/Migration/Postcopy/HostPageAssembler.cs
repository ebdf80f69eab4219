using System.Globalization;
using Modular.Core.Memory;

namespace Modular.Core.Migration.Postcopy;

/// <summary>
/// Assembles the host pages of blocks on huge pages (2 MiB hugetlbfs) during postcopy: after LISTEN a
/// huge page can only be placed whole and atomically (one UFFDIO_COPY), so its target pages, which the
/// source sends in order with nothing between them (QEMU's ram_save_host_page), are gathered in a
/// staging buffer and the host page is placed when its last target page arrives (QEMU's
/// ram_load_postcopy). A host page made only of ZERO records is placed as a zero page. Pages of
/// blocks on target-size host pages go in runs (<see cref="PageRunBatcher"/>) after LISTEN, and
/// every page before LISTEN goes straight to <see cref="PostcopyRam.Place"/>.
/// </summary>
/// <remarks>
/// One assembler per <c>RamLoader</c> (per incoming channel): each channel carries whole host pages
/// of its own, so each assembles its own. Threads: created on the main incoming task at
/// POSTCOPY_ADVISE; <see cref="Add"/> on the thread that reads that loader's stream (the main
/// incoming task before LISTEN, the listen thread after it); not thread-safe. The staging buffer is
/// pinned and allocated here once, so <see cref="Add"/> allocates nothing. It is not guest RAM, so
/// managed code may write it.
/// </remarks>
internal sealed class HostPageAssembler
{
    private readonly PostcopyRam _ram;
    private readonly PageRunBatcher _runs;
    private readonly byte[] _staging;
    private RamBlock? _block;
    private ulong _hostOffset;
    private ulong _nextOffset;
    private bool _allZero;

    /// <param name="ram">Postcopy's RAM (its largest host page sizes the staging buffer).</param>
    internal HostPageAssembler(PostcopyRam ram)
    {
        _ram = ram;
        _runs = new PageRunBatcher(ram);
        ulong largest = ram.MaxHostPageSize;
        _staging = largest > RamBlock.TargetPageSize ? GC.AllocateUninitializedArray<byte>(checked((int)largest), pinned: true) : [];
    }

    /// <summary>True while a host page has some but not all of its target pages.</summary>
    internal bool IsAssembling => _block is not null;

    /// <summary>
    /// Takes one target page from the stream: placed at once (small host pages, or RAM not armed yet),
    /// or staged; the host page is placed when this was its last target page.
    /// </summary>
    /// <param name="block">The page's RAM block.</param>
    /// <param name="offset">The target page's offset in the block.</param>
    /// <param name="page">The target page (for a ZERO record: any zero-filled target page).</param>
    /// <param name="isZero">True for a ZERO record.</param>
    /// <exception cref="HostPageAssemblyException">The target page is not the one the host page being assembled needs next.</exception>
    internal void Add(RamBlock block, ulong offset, ReadOnlySpan<byte> page, bool isZero)
    {
        ulong hostPageSize = block.HostPageSize;
        if (hostPageSize == RamBlock.TargetPageSize || !_ram.IsArmed)
        {
            if (_block is not null)
            {
                throw OutOfOrder(block, offset);
            }

            if (_ram.IsArmed && (!isZero || _ram.MapsShared(block)))
            {
                _runs.Add(block, offset, page, isZero);
                return;
            }

            _runs.Flush();
            _ram.Place(block, offset, page, isZero);
            return;
        }

        _runs.Flush();

        if (_block is null)
        {
            if (offset % hostPageSize != 0)
            {
                throw new HostPageAssemblyException(string.Create(CultureInfo.InvariantCulture,
                    $"Target page 0x{offset:x} of RAM block '{block.Name}' arrived without the start of its 0x{hostPageSize:x}-byte host page 0x{offset / hostPageSize * hostPageSize:x}: after POSTCOPY_LISTEN the source must send each host page's target pages in order, from its first, with nothing between them."));
            }

            _block = block;
            _hostOffset = offset;
            _nextOffset = offset;
            _allZero = true;
        }
        else if (!ReferenceEquals(block, _block) || offset != _nextOffset)
        {
            throw OutOfOrder(block, offset);
        }

        Span<byte> slot = _staging.AsSpan((int)(offset - _hostOffset), RamBlock.TargetPageSize);
        if (isZero)
        {
            slot.Clear();
        }
        else
        {
            page.CopyTo(slot);
            _allZero = false;
        }

        _nextOffset = offset + RamBlock.TargetPageSize;
        if (_nextOffset - _hostOffset == hostPageSize)
        {
            _block = null;
            _ram.PlaceHostPage(block, _hostOffset, _staging.AsSpan(0, (int)hostPageSize), _allZero);
        }
    }

    /// <summary>
    /// Places the 4 KiB pages waiting in the current run (<see cref="PageRunBatcher"/>). The loader
    /// calls it whenever it has taken every record it holds, before it waits for more.
    /// </summary>
    internal void Flush() => _runs.Flush();

    /// <summary>
    /// Postcopy recovery: the connection broke off, maybe inside a host page. Places the waiting 4 KiB
    /// runs (whole pages, as sent) and drops a host page assembled only in part: it is not received,
    /// so the source sends it again, whole, on the recovered connection.
    /// </summary>
    internal void AbandonPartialHostPage()
    {
        _runs.Flush();
        _block = null;
    }

    private HostPageAssemblyException OutOfOrder(RamBlock block, ulong offset) =>
        new(string.Create(CultureInfo.InvariantCulture,
            $"Target page 0x{offset:x} of RAM block '{block.Name}' arrived while host page 0x{_hostOffset:x} of RAM block '{_block!.Name}' (0x{_block.HostPageSize:x} bytes) was being assembled and needed its target page 0x{_nextOffset:x} next: after POSTCOPY_LISTEN the source must send each host page's target pages in order, with nothing between them."));
}

/// <summary>A target page arrived out of order for the host page being assembled (postcopy of huge-page RAM).</summary>
public sealed class HostPageAssemblyException : InvalidOperationException
{
    /// <summary>Creates the exception.</summary>
    public HostPageAssemblyException() { }

    /// <summary>Creates the exception with a message naming the pages.</summary>
    /// <param name="message">Which target page came, which was needed, and of which host page.</param>
    public HostPageAssemblyException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and cause.</summary>
    /// <param name="message">Which target page came, which was needed, and of which host page.</param>
    /// <param name="innerException">The cause.</param>
    public HostPageAssemblyException(string message, Exception innerException) : base(message, innerException) { }
}
