using System.Globalization;

namespace Modular.Abstractions.Memory;

/// <summary>A guest-physical address: a distinct type so it is never confused with a host address or an offset.</summary>
/// <param name="Value">The address as the guest sees it.</param>
public readonly record struct GuestPhysicalAddress(ulong Value) : IComparable<GuestPhysicalAddress>
{
    /// <summary>The address <paramref name="bytes"/> further on.</summary>
    /// <param name="bytes">Distance in bytes.</param>
    public GuestPhysicalAddress Add(ulong bytes) => new(checked(Value + bytes));

    /// <summary>The address rounded down to a multiple of <paramref name="alignment"/> (a power of two).</summary>
    /// <param name="alignment">A power of two, such as the page size.</param>
    public GuestPhysicalAddress AlignDown(ulong alignment) => new(Value & ~(alignment - 1));

    /// <inheritdoc />
    public int CompareTo(GuestPhysicalAddress other) => Value.CompareTo(other.Value);

    /// <summary>Formats as <c>0x…</c>, the way error messages print addresses.</summary>
    public override string ToString() => "0x" + Value.ToString("x", CultureInfo.InvariantCulture);

    /// <summary>Orders addresses.</summary>
    public static bool operator <(GuestPhysicalAddress left, GuestPhysicalAddress right) => left.Value < right.Value;

    /// <summary>Orders addresses.</summary>
    public static bool operator >(GuestPhysicalAddress left, GuestPhysicalAddress right) => left.Value > right.Value;

    /// <summary>Orders addresses.</summary>
    public static bool operator <=(GuestPhysicalAddress left, GuestPhysicalAddress right) => left.Value <= right.Value;

    /// <summary>Orders addresses.</summary>
    public static bool operator >=(GuestPhysicalAddress left, GuestPhysicalAddress right) => left.Value >= right.Value;
}
