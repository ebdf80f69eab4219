namespace Modular.Abstractions.Faults;

/// <summary>
/// Optional capability of an <see cref="IFaultBackend"/>: guest RAM in shared memory (a memfd mapped
/// twice), whose pages the engine writes itself through its second mapping and the backend then
/// maps into the guest's mapping (userfaultfd: minor faults and UFFDIO_CONTINUE). Compared with
/// placing copies (<see cref="IFaultBackend.PlacePages"/>), nothing is allocated or copied inside the
/// placement, and the destination can fault its RAM in while it waits for the source.
/// </summary>
/// <remarks>
/// Thread rules as for <see cref="IFaultBackend"/>: <see cref="MapPages"/> on the listen thread, the
/// preempt reader and the fault thread, allocation-free. The engine guarantees that a page's
/// contents are written once, before the first <see cref="MapPages"/> that covers it.
/// </remarks>
public interface ISharedRamFaultBackend
{
    /// <summary>Null when shared ranges can be armed here; otherwise why not (for the log: the engine then places copies).</summary>
    string? SharedRamUnavailableReason { get; }

    /// <summary>
    /// Arms a range of a shared mapping: from now on a touch of a page that the range does not map
    /// yet is a fault, whether the shared memory holds the page or not.
    /// </summary>
    /// <param name="range">The guest's mapping of the shared memory.</param>
    /// <exception cref="FaultBackendException">Registration was refused; the message says why.</exception>
    void ArmShared(HostRamRange range);

    /// <summary>
    /// Maps [<paramref name="hostAddress"/>, +<paramref name="length"/>) of an armed shared range from
    /// the shared memory, whose contents the engine has written, and wakes the threads waiting there.
    /// Pages the range already maps are left as they are (their waiters are woken). Returns how many
    /// pages this call mapped.
    /// </summary>
    /// <param name="hostAddress">Page-aligned start inside a range given to <see cref="ArmShared"/>.</param>
    /// <param name="length">A whole number of pages.</param>
    int MapPages(nint hostAddress, ulong length);
}
