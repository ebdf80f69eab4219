using System.Buffers.Binary;
using Modular.Abstractions.Memory;

namespace Modular.Core.Boot;

/// <summary>Multiboot memory map entry types.</summary>
public enum MultibootMemoryType : uint
{
    /// <summary>Not set.</summary>
    Invalid = 0,

    /// <summary>RAM the kernel may use.</summary>
    Available = 1,

    /// <summary>Reserved: firmware, ROM, the EBDA.</summary>
    Reserved = 2,
}

/// <summary>One entry of the Multiboot memory map.</summary>
/// <param name="Base">First address.</param>
/// <param name="Length">Length in bytes.</param>
/// <param name="Type">What the range is.</param>
public readonly record struct MultibootMemoryMapEntry(ulong Base, ulong Length, MultibootMemoryType Type);

/// <summary>
/// The Multiboot info block Modular hands a kernel (KVM-NOTES step 5), built from the guest's RAM
/// layout: flags 1|64 (mem_lower/mem_upper and a memory map), mem_lower 639 KiB, mem_upper = the RAM
/// from 1 MiB up to the first hole below 4 GiB, and a map with the PC holes (EBDA 0x9fc00, VGA and
/// ROM 0xa0000-0xfffff) taken out. It lives at 0x9000-0x9fff, which Modular's guests never use.
/// </summary>
public static class MultibootInfo
{
    /// <summary>Where the info structure goes (EBX at entry): 0x9000.</summary>
    public const ulong InfoAddress = 0x9000;

    /// <summary>Where the memory map goes: 0x9100.</summary>
    public const ulong MemoryMapAddress = 0x9100;

    /// <summary>The whole area the info block may use: 0x9000-0x9fff.</summary>
    public const ulong AreaSize = 0x1000;

    /// <summary>Info flags: bit 0 (mem_lower, mem_upper) and bit 6 (mmap_length, mmap_addr).</summary>
    public const uint Flags = 1 | 64;

    private const ulong ExtendedBiosDataArea = 0x9FC00;
    private const ulong HighMemoryStart = 0x100000;
    private const ulong BiosRomStart = 0xF0000;
    private const int InfoStructSize = 0x100;
    private const int MapEntrySize = 24;

    /// <summary>The memory map for a guest with RAM runs <paramref name="ram"/>, sorted by address.</summary>
    /// <param name="ram">The guest's RAM runs.</param>
    public static IReadOnlyList<MultibootMemoryMapEntry> MemoryMap(IReadOnlyList<GuestRamRange> ram)
    {
        ArgumentNullException.ThrowIfNull(ram);
        var entries = new List<MultibootMemoryMapEntry>
        {
            new(ExtendedBiosDataArea, 0xA0000 - ExtendedBiosDataArea, MultibootMemoryType.Reserved),
            new(BiosRomStart, HighMemoryStart - BiosRomStart, MultibootMemoryType.Reserved),
        };
        foreach (GuestRamRange range in ram)
        {
            ulong start = range.Start.Value;
            ulong end = range.End.Value;
            if (start < ExtendedBiosDataArea)
            {
                entries.Add(new(start, Math.Min(end, ExtendedBiosDataArea) - start, MultibootMemoryType.Available));
            }

            if (end > HighMemoryStart)
            {
                ulong highStart = Math.Max(start, HighMemoryStart);
                entries.Add(new(highStart, end - highStart, MultibootMemoryType.Available));
            }
        }

        entries.Sort((left, right) => left.Base.CompareTo(right.Base));
        return entries;
    }

    /// <summary>
    /// Writes the info structure at <see cref="InfoAddress"/> and the memory map at
    /// <see cref="MemoryMapAddress"/> through <paramref name="memory"/>. The caller checked that the
    /// area is RAM and that no kernel segment overlaps it.
    /// </summary>
    /// <param name="memory">Guest RAM.</param>
    /// <param name="ram">The guest's RAM runs.</param>
    /// <returns>The info address, for EBX.</returns>
    public static GuestPhysicalAddress Write(IGuestMemory memory, IReadOnlyList<GuestRamRange> ram)
    {
        ArgumentNullException.ThrowIfNull(memory);
        IReadOnlyList<MultibootMemoryMapEntry> map = MemoryMap(ram);
        int mapBytes = map.Count * MapEntrySize;
        if ((ulong)mapBytes > AreaSize - (MemoryMapAddress - InfoAddress))
        {
            throw new ArgumentException($"The guest RAM layout has {ram.Count} runs; the Multiboot memory map holds at most 160 entries.", nameof(ram));
        }

        Span<byte> block = new byte[AreaSize];
        Span<byte> info = block[..InfoStructSize];
        BinaryPrimitives.WriteUInt32LittleEndian(info[0..], Flags);
        BinaryPrimitives.WriteUInt32LittleEndian(info[4..], (uint)(LowMemory(map) / 1024));
        BinaryPrimitives.WriteUInt32LittleEndian(info[8..], (uint)(UpperMemory(map) / 1024));
        BinaryPrimitives.WriteUInt32LittleEndian(info[44..], (uint)mapBytes);
        BinaryPrimitives.WriteUInt32LittleEndian(info[48..], (uint)MemoryMapAddress);

        Span<byte> entries = block[(int)(MemoryMapAddress - InfoAddress)..];
        for (int index = 0; index < map.Count; index++)
        {
            // Each entry: u32 size (of what follows, 20), u64 base, u64 length, u32 type.
            Span<byte> entry = entries.Slice(index * MapEntrySize, MapEntrySize);
            BinaryPrimitives.WriteUInt32LittleEndian(entry, MapEntrySize - 4);
            BinaryPrimitives.WriteUInt64LittleEndian(entry[4..], map[index].Base);
            BinaryPrimitives.WriteUInt64LittleEndian(entry[12..], map[index].Length);
            BinaryPrimitives.WriteUInt32LittleEndian(entry[20..], (uint)map[index].Type);
        }

        var address = new GuestPhysicalAddress(InfoAddress);
        memory.Write(address, block);
        return address;
    }

    private static ulong LowMemory(IReadOnlyList<MultibootMemoryMapEntry> map) =>
        map.FirstOrDefault(entry => entry.Base == 0 && entry.Type == MultibootMemoryType.Available).Length;

    // mem_upper counts the RAM from 1 MiB to the first hole, and only below 4 GiB (it is 32-bit KiB).
    private static ulong UpperMemory(IReadOnlyList<MultibootMemoryMapEntry> map)
    {
        MultibootMemoryMapEntry upper = map.FirstOrDefault(entry => entry.Base == HighMemoryStart && entry.Type == MultibootMemoryType.Available);
        return Math.Min(upper.Base + upper.Length, 1UL << 32) - Math.Min(upper.Base + upper.Length, HighMemoryStart);
    }
}
