using Modular.Abstractions.Memory;

namespace Modular.Core.Boot;

/// <summary>Loading a parsed Multiboot kernel into guest RAM.</summary>
public sealed partial class MultibootImage
{
    private const int ZeroChunk = 64 * 1024;

    /// <summary>
    /// Writes the kernel's segments (zeroing their bss) and the Multiboot info block
    /// (<see cref="MultibootInfo"/>) into guest RAM through <paramref name="memory"/>, as QEMU's
    /// <c>-kernel</c> does before the first instruction. Call it on a stopped guest, from any thread.
    /// </summary>
    /// <param name="memory">Guest RAM; every byte goes through its <see cref="IGuestMemory.Write"/>.</param>
    /// <param name="ram">The guest's RAM runs (for example <see cref="PcRamLayout.For"/>): the memory
    /// map the kernel sees and the ranges its segments must fit in.</param>
    /// <returns>The entry point and the info address for the vCPU's EIP and EBX.</returns>
    /// <exception cref="MultibootLoadException">A segment lies outside RAM or over the info block, or
    /// the RAM does not cover the info block.</exception>
    public MultibootBoot Load(IGuestMemory memory, IReadOnlyList<GuestRamRange> ram)
    {
        ArgumentNullException.ThrowIfNull(memory);
        ArgumentNullException.ThrowIfNull(ram);

        var infoArea = new GuestRamRange(new GuestPhysicalAddress(MultibootInfo.InfoAddress), MultibootInfo.AreaSize);
        if (!ram.Any(range => range.Contains(infoArea.Start, infoArea.Size)))
        {
            throw new MultibootLoadException(FileName,
                $"{FileName}: guest RAM ({Describe(ram)}) does not cover {infoArea}, where Modular writes the Multiboot " +
                "info block; give the guest RAM from address 0.");
        }

        foreach (MultibootSegment segment in Segments)
        {
            if (!ram.Any(range => range.Contains(segment.Address, segment.MemorySize)))
            {
                throw new MultibootLoadException(FileName,
                    $"{FileName}: its segment {segment.Address}-{segment.End} lies outside guest RAM ({Describe(ram)}); " +
                    "give the guest more RAM or link the kernel at a lower address.");
            }

            if (segment.Address < infoArea.End && infoArea.Start < segment.End)
            {
                throw new MultibootLoadException(FileName,
                    $"{FileName}: its segment {segment.Address}-{segment.End} overlaps {infoArea}, where Modular writes the " +
                    "Multiboot info block; link the kernel elsewhere (Modular's test guests load at 0x10000).");
            }
        }

        foreach (MultibootSegment segment in Segments)
        {
            memory.Write(segment.Address, _file.AsSpan(segment.FileOffset, segment.FileSize));
            WriteZeros(memory, segment.Address.Add((ulong)segment.FileSize), segment.MemorySize - (ulong)segment.FileSize);
        }

        GuestPhysicalAddress info = MultibootInfo.Write(memory, ram);
        return new MultibootBoot(Entry, info);
    }

    private static void WriteZeros(IGuestMemory memory, GuestPhysicalAddress address, ulong length)
    {
        ReadOnlySpan<byte> zeros = new byte[(int)Math.Min(length, ZeroChunk)];
        while (length > 0)
        {
            int chunk = (int)Math.Min(length, ZeroChunk);
            memory.Write(address, zeros[..chunk]);
            address = address.Add((ulong)chunk);
            length -= (ulong)chunk;
        }
    }

    private static string Describe(IReadOnlyList<GuestRamRange> ram) =>
        ram.Count == 0 ? "none" : string.Join(", ", ram);
}
