using Modular.Abstractions.Memory;
using Modular.Core.Boot;

namespace Modular.Tests.Boot;

/// <summary>
/// A test double of guest RAM: the layout's runs, stored sparsely page by page so a 5 GiB layout
/// costs only the pages written. Unwritten pages read as zero, like fresh anonymous memory.
/// </summary>
internal sealed class SparseGuestMemory : IGuestMemory
{
    private const int Page = 4096;
    private readonly Dictionary<ulong, byte[]> _pages = [];
    private readonly IReadOnlyList<GuestRamRange> _ram;

    public SparseGuestMemory(IReadOnlyList<GuestRamRange> ram)
    {
        _ram = ram;
        Size = (ulong)ram.Sum(range => (decimal)range.Size);
    }

    public ulong Size { get; }

    public int PageSize => Page;

    /// <summary>How many pages have been written.</summary>
    public int PagesTouched => _pages.Count;

    public bool Contains(GuestPhysicalAddress address, ulong length) =>
        _ram.Any(range => range.Contains(address, length));

    public void Read(GuestPhysicalAddress address, Span<byte> destination)
    {
        Check(address, destination.Length);
        ulong at = address.Value;
        while (!destination.IsEmpty)
        {
            int offset = (int)(at % Page);
            int chunk = Math.Min(destination.Length, Page - offset);
            if (_pages.TryGetValue(at - (ulong)offset, out byte[]? page))
            {
                page.AsSpan(offset, chunk).CopyTo(destination);
            }
            else
            {
                destination[..chunk].Clear();
            }

            destination = destination[chunk..];
            at += (ulong)chunk;
        }
    }

    public void Write(GuestPhysicalAddress address, ReadOnlySpan<byte> source)
    {
        Check(address, source.Length);
        ulong at = address.Value;
        while (!source.IsEmpty)
        {
            int offset = (int)(at % Page);
            int chunk = Math.Min(source.Length, Page - offset);
            ulong pageAddress = at - (ulong)offset;
            if (!_pages.TryGetValue(pageAddress, out byte[]? page))
            {
                page = new byte[Page];
                _pages[pageAddress] = page;
            }

            source[..chunk].CopyTo(page.AsSpan(offset));
            source = source[chunk..];
            at += (ulong)chunk;
        }
    }

    /// <summary>Sets the first byte of the page at <paramref name="address"/>.</summary>
    public void SetFirstByte(ulong address, byte value) => Write(new GuestPhysicalAddress(address), [value]);

    /// <summary>Reads a little-endian u32.</summary>
    public uint ReadU32(ulong address)
    {
        Span<byte> bytes = stackalloc byte[4];
        Read(new GuestPhysicalAddress(address), bytes);
        return System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(bytes);
    }

    /// <summary>Reads a little-endian u64.</summary>
    public ulong ReadU64(ulong address)
    {
        Span<byte> bytes = stackalloc byte[8];
        Read(new GuestPhysicalAddress(address), bytes);
        return System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(bytes);
    }

    private void Check(GuestPhysicalAddress address, int length)
    {
        if (!Contains(address, (ulong)length))
        {
            throw new ArgumentOutOfRangeException(nameof(address), $"{address}+0x{length:x} is not inside guest RAM.");
        }
    }
}
