using System.Globalization;
using Modular.Abstractions.Memory;

namespace Modular.Core.Boot;

/// <summary>One run of guest RAM as the guest sees it: <paramref name="Size"/> bytes from <paramref name="Start"/>.</summary>
/// <param name="Start">The first guest-physical address of the run.</param>
/// <param name="Size">Its length in bytes.</param>
public readonly record struct GuestRamRange(GuestPhysicalAddress Start, ulong Size)
{
    /// <summary>The first address after the run.</summary>
    public GuestPhysicalAddress End => Start.Add(Size);

    /// <summary>True when [<paramref name="address"/>, +<paramref name="length"/>) lies inside this run.</summary>
    /// <param name="address">Start of the range.</param>
    /// <param name="length">Length in bytes.</param>
    public bool Contains(GuestPhysicalAddress address, ulong length) =>
        address >= Start && address.Value - Start.Value <= Size && length <= Size - (address.Value - Start.Value);

    /// <summary>Formats as <c>0xSTART-0xEND</c>, the way error messages print ranges.</summary>
    public override string ToString() =>
        string.Create(CultureInfo.InvariantCulture, $"{Start}-{End}");
}

/// <summary>
/// The PC RAM layout Modular gives a KVM guest (KVM-NOTES step 3): up to 3 GiB at guest-physical 0;
/// RAM beyond that continues at 4 GiB, leaving 3-4 GiB free for device memory, as QEMU's pc machine does.
/// </summary>
public static class PcRamLayout
{
    /// <summary>How much RAM stays below 4 GiB: 3 GiB.</summary>
    public const ulong LowRamLimit = 3UL << 30;

    /// <summary>Where RAM above <see cref="LowRamLimit"/> continues: 4 GiB.</summary>
    public const ulong HighRamStart = 4UL << 30;

    /// <summary>The RAM runs of a guest with <paramref name="ramSize"/> bytes, lowest first.</summary>
    /// <param name="ramSize">Total guest RAM in bytes (more than 1 MiB).</param>
    /// <returns>One run for up to 3 GiB, otherwise two: 0-3 GiB and 4 GiB onwards.</returns>
    public static IReadOnlyList<GuestRamRange> For(ulong ramSize)
    {
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(ramSize, 1UL << 20);
        if (ramSize <= LowRamLimit)
        {
            return [new GuestRamRange(new GuestPhysicalAddress(0), ramSize)];
        }

        return
        [
            new GuestRamRange(new GuestPhysicalAddress(0), LowRamLimit),
            new GuestRamRange(new GuestPhysicalAddress(HighRamStart), ramSize - LowRamLimit),
        ];
    }
}
