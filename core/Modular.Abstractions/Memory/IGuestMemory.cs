namespace Modular.Abstractions.Memory;

/// <summary>
/// Guest RAM as a device model or workload sees it. Every access copies through native code, so a
/// thread that touches a page the fault backend has not placed yet blocks in preemptive GC mode and
/// never stalls a garbage collection (DESIGN.md §5). Never take a pointer into guest RAM from
/// managed code.
/// </summary>
public interface IGuestMemory
{
    /// <summary>The total RAM size in bytes, over all blocks.</summary>
    ulong Size { get; }

    /// <summary>The target page size (4096 on x86).</summary>
    int PageSize { get; }

    /// <summary>Copies guest RAM at <paramref name="address"/> into <paramref name="destination"/>.</summary>
    /// <param name="address">Where to read from.</param>
    /// <param name="destination">Receives the bytes; its length is the number of bytes read.</param>
    /// <exception cref="ArgumentOutOfRangeException">The range is not inside guest RAM.</exception>
    void Read(GuestPhysicalAddress address, Span<byte> destination);

    /// <summary>Copies <paramref name="source"/> into guest RAM and marks the pages dirty for migration.</summary>
    /// <param name="address">Where to write to.</param>
    /// <param name="source">The bytes to write.</param>
    /// <exception cref="ArgumentOutOfRangeException">The range is not inside guest RAM.</exception>
    void Write(GuestPhysicalAddress address, ReadOnlySpan<byte> source);

    /// <summary>True when [<paramref name="address"/>, +<paramref name="length"/>) lies inside guest RAM.</summary>
    /// <param name="address">Start of the range.</param>
    /// <param name="length">Length in bytes.</param>
    bool Contains(GuestPhysicalAddress address, ulong length);
}
