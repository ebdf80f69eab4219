using Modular.Abstractions.Memory;
using Modular.Core.Boot;

namespace Modular.Tests.Boot;

/// <summary>
/// A read-only test double of guest RAM whose every page's first byte is computed by a function of the
/// page address (other bytes read as zero), so RAM of any size costs nothing. Counts reads.
/// </summary>
internal sealed class FirstByteMemory(IReadOnlyList<GuestRamRange> ram, Func<ulong, byte> firstByte) : IGuestMemory
{
    public ulong Size { get; } = (ulong)ram.Sum(range => (decimal)range.Size);

    public int PageSize => 4096;

    public ulong Reads { get; private set; }

    public bool Contains(GuestPhysicalAddress address, ulong length)
    {
        foreach (GuestRamRange range in ram)
        {
            if (range.Contains(address, length))
            {
                return true;
            }
        }

        return false;
    }

    public void Read(GuestPhysicalAddress address, Span<byte> destination)
    {
        if (!Contains(address, (ulong)destination.Length))
        {
            throw new ArgumentOutOfRangeException(nameof(address), $"{address} is not guest RAM.");
        }

        Reads++;
        destination.Clear();
        if (address.Value % 4096 == 0 && !destination.IsEmpty)
        {
            destination[0] = firstByte(address.Value);
        }
    }

    public void Write(GuestPhysicalAddress address, ReadOnlySpan<byte> source) =>
        throw new NotSupportedException("FirstByteMemory is read-only.");
}
