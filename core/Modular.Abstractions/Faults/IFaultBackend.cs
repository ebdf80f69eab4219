using Modular.Abstractions.Plugins;

namespace Modular.Abstractions.Faults;

/// <summary>
/// A fault backend plugin (userfaultfd is the real one): lets the postcopy destination run the guest
/// before all of its RAM has arrived. Export it with <see cref="FaultBackendMetadataAttribute"/>.
/// <see cref="IProbePlugin.Probe"/> is what POSTCOPY_ADVISE checks on the destination.
/// </summary>
public interface IFaultBackendFactory : IProbePlugin
{
    /// <summary>Opens a backend instance for one incoming migration.</summary>
    /// <exception cref="FaultBackendException">The backend cannot be used here; the message says what is missing.</exception>
    IFaultBackend Open();
}

/// <summary>A range of host virtual memory that backs guest RAM.</summary>
/// <param name="HostAddress">Start of the mapping in this process (page aligned).</param>
/// <param name="Length">Length in bytes (a multiple of <paramref name="PageSize"/>).</param>
/// <param name="PageSize">The host page size of the mapping: 4096, or 2 MiB for hugetlbfs.</param>
public readonly record struct HostRamRange(nint HostAddress, ulong Length, ulong PageSize);

/// <summary>A thread touched an armed page that is not there yet.</summary>
/// <param name="HostAddress">The faulting address (not necessarily page aligned).</param>
/// <param name="ThreadId">The kernel thread id that faulted, when the backend knows it (else 0).</param>
/// <param name="IsWrite">True for a write access.</param>
public readonly record struct PageFault(nint HostAddress, int ThreadId, bool IsWrite);

/// <summary>What happened when a page was placed.</summary>
public enum PlaceResult
{
    /// <summary>Not a valid result.</summary>
    Invalid = 0,

    /// <summary>The page was placed and its waiters woken.</summary>
    Placed = 1,

    /// <summary>The page was already present (it arrived twice); waiters were woken anyway.</summary>
    AlreadyPresent = 2,
}

/// <summary>
/// One armed fault backend. Thread rules: <see cref="ReadFaults"/> runs on the engine's fault thread;
/// placement runs on the listen thread (and the fault thread); none of them may allocate managed
/// memory on the hot path. Managed code never touches armed RAM directly (DESIGN.md §5).
/// </summary>
public interface IFaultBackend : IDisposable
{
    /// <summary>Arms <paramref name="range"/>: from now on, a touch of a missing page there is a fault.</summary>
    /// <param name="range">Guest RAM backing memory.</param>
    /// <exception cref="FaultBackendException">Registration was refused; the message says why.</exception>
    void Arm(HostRamRange range);

    /// <summary>Disarms <paramref name="range"/>; waiting threads are woken.</summary>
    /// <param name="range">A range given to <see cref="Arm"/>.</param>
    void Disarm(HostRamRange range);

    /// <summary>
    /// Blocks until at least one fault arrives or <see cref="Shutdown"/> is called; fills
    /// <paramref name="faults"/> and returns how many were stored (0 after shutdown). Fault thread.
    /// </summary>
    /// <param name="faults">Receives the faults.</param>
    int ReadFaults(Span<PageFault> faults);

    /// <summary>Atomically places <paramref name="contents"/> (one host page) at <paramref name="hostAddress"/> and wakes waiters.</summary>
    /// <param name="hostAddress">Page-aligned destination inside an armed range.</param>
    /// <param name="contents">Exactly one host page of data.</param>
    PlaceResult PlacePage(nint hostAddress, ReadOnlySpan<byte> contents);

    /// <summary>
    /// Places consecutive host pages starting at <paramref name="hostAddress"/>, each atomically, and
    /// wakes their waiters; a page that is already present is left as it is (its waiters are woken)
    /// and the rest are still placed. Returns how many pages this call placed. A backend that can
    /// place a run in one step (userfaultfd: one UFFDIO_COPY) should override this; the default
    /// places the pages one by one with <see cref="PlacePage"/>.
    /// </summary>
    /// <param name="hostAddress">Page-aligned destination of the first page, inside an armed range.</param>
    /// <param name="contents">A whole number of host pages of data.</param>
    /// <param name="pageSize">The host page size of that range.</param>
    int PlacePages(nint hostAddress, ReadOnlySpan<byte> contents, ulong pageSize)
    {
        if (pageSize == 0 || (ulong)contents.Length % pageSize != 0)
        {
            throw new ArgumentException($"PlacePages needs a whole number of 0x{pageSize:x}-byte pages; it was given 0x{contents.Length:x} bytes.", nameof(contents));
        }

        int placed = 0;
        for (int at = 0; at < contents.Length; at += (int)pageSize)
        {
            if (PlacePage(hostAddress + at, contents.Slice(at, (int)pageSize)) == PlaceResult.Placed)
            {
                placed++;
            }
        }

        return placed;
    }

    /// <summary>Atomically places a zero page at <paramref name="hostAddress"/> and wakes waiters.</summary>
    /// <param name="hostAddress">Page-aligned destination inside an armed range.</param>
    /// <param name="pageSize">The host page size of that range.</param>
    PlaceResult PlaceZeroPage(nint hostAddress, ulong pageSize);

    /// <summary>Wakes threads waiting on [<paramref name="hostAddress"/>, +<paramref name="length"/>) whose page is already present.</summary>
    /// <param name="hostAddress">Page-aligned start.</param>
    /// <param name="length">Length in bytes.</param>
    void Wake(nint hostAddress, ulong length);

    /// <summary>Makes a blocked <see cref="ReadFaults"/> return 0. Any thread; idempotent.</summary>
    void Shutdown();
}

/// <summary>A fault backend could not be opened, armed or used. The message says what is missing.</summary>
public class FaultBackendException : Exception
{
    /// <summary>Creates the exception.</summary>
    public FaultBackendException() { }

    /// <summary>Creates the exception with a message.</summary>
    /// <param name="message">What failed and what to do.</param>
    public FaultBackendException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and cause.</summary>
    /// <param name="message">What failed and what to do.</param>
    /// <param name="innerException">The cause.</param>
    public FaultBackendException(string message, Exception innerException) : base(message, innerException) { }
}
