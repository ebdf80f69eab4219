using System.Buffers.Binary;
using Modular.Abstractions.Memory;

namespace Modular.Core.Boot;

/// <summary>How a Multiboot kernel says where its bytes go.</summary>
public enum MultibootImageFormat
{
    /// <summary>Not set.</summary>
    Invalid = 0,

    /// <summary>The header's own address fields (flags bit 16, the "a.out kludge").</summary>
    AoutKludge = 1,

    /// <summary>The PT_LOAD program headers of an ELF32 file.</summary>
    Elf32 = 2,
}

/// <summary>
/// One run of the kernel in guest memory: <paramref name="FileSize"/> bytes copied from the file at
/// <paramref name="FileOffset"/>, then zeros up to <paramref name="MemorySize"/> (bss).
/// </summary>
/// <param name="Address">Where the run starts in guest-physical memory.</param>
/// <param name="FileOffset">Where its bytes start in the file.</param>
/// <param name="FileSize">How many bytes come from the file.</param>
/// <param name="MemorySize">Its whole length in memory, at least <paramref name="FileSize"/>.</param>
public readonly record struct MultibootSegment(GuestPhysicalAddress Address, int FileOffset, int FileSize, ulong MemorySize)
{
    /// <summary>The first address after the run.</summary>
    public GuestPhysicalAddress End => Address.Add(MemorySize);
}

/// <summary>
/// Where a loaded Multiboot kernel starts: the vCPU enters <paramref name="Entry"/> in 32-bit flat
/// protected mode with EAX = <see cref="MultibootImage.BootMagic"/> and EBX = <paramref name="InfoAddress"/>.
/// </summary>
/// <param name="Entry">The entry point (EIP).</param>
/// <param name="InfoAddress">The Multiboot info block (EBX).</param>
public sealed record MultibootBoot(GuestPhysicalAddress Entry, GuestPhysicalAddress InfoAddress);

/// <summary>
/// A Multiboot v1 kernel, parsed the way QEMU's <c>-kernel</c> reads one: the header in the first
/// 8 KiB on a 4-byte boundary; with flags bit 16 the header's address fields place the image,
/// otherwise the file must be ELF32 and its PT_LOAD program headers do. Immutable; any thread.
/// </summary>
public sealed partial class MultibootImage
{
    /// <summary>The header magic, 0x1BADB002.</summary>
    public const uint HeaderMagic = 0x1BADB002;

    /// <summary>What the loader leaves in EAX for the kernel, 0x2BADB002.</summary>
    public const uint BootMagic = 0x2BADB002;

    /// <summary>How far into the file the header may start: 8 KiB.</summary>
    public const int HeaderSearchLimit = 8192;

    /// <summary>Flags bit 16: the header carries load addresses (the a.out kludge).</summary>
    public const uint AoutKludgeFlag = 1u << 16;

    // Bits 0-15 are requirements a loader must refuse when it cannot meet them. Bit 0 (align
    // modules to pages) holds trivially without modules, bit 1 (memory information) is always given.
    private const uint SupportedRequiredFlags = 0b11;

    private MultibootImage(
        string fileName,
        byte[] file,
        int headerOffset,
        uint flags,
        MultibootImageFormat format,
        GuestPhysicalAddress entry,
        IReadOnlyList<MultibootSegment> segments)
    {
        FileName = fileName;
        _file = file;
        HeaderOffset = headerOffset;
        Flags = flags;
        Format = format;
        Entry = entry;
        Segments = segments;
    }

    private readonly byte[] _file;

    /// <summary>The file name the image was parsed from, as used in error messages.</summary>
    public string FileName { get; }

    /// <summary>Where the Multiboot header starts in the file.</summary>
    public int HeaderOffset { get; }

    /// <summary>The header's flags word.</summary>
    public uint Flags { get; }

    /// <summary>Which description placed the image.</summary>
    public MultibootImageFormat Format { get; }

    /// <summary>The entry point, a guest-physical address.</summary>
    public GuestPhysicalAddress Entry { get; }

    /// <summary>The runs to load, in file order.</summary>
    public IReadOnlyList<MultibootSegment> Segments { get; }

    /// <summary>Reads and parses the kernel at <paramref name="path"/>.</summary>
    /// <param name="path">The kernel file.</param>
    /// <exception cref="MultibootImageException">The file is not a loadable Multiboot v1 kernel.</exception>
    public static MultibootImage ReadFile(string path) => Parse(File.ReadAllBytes(path), path);

    /// <summary>Parses <paramref name="file"/>, the contents of the kernel named <paramref name="fileName"/>.</summary>
    /// <param name="file">The whole kernel file; kept (not copied) for <see cref="Load"/>.</param>
    /// <param name="fileName">The name error messages use.</param>
    /// <exception cref="MultibootImageException">The file is not a loadable Multiboot v1 kernel.</exception>
    public static MultibootImage Parse(byte[] file, string fileName)
    {
        ArgumentNullException.ThrowIfNull(file);
        ArgumentNullException.ThrowIfNull(fileName);

        int headerOffset = FindHeader(file, fileName);
        uint flags = ReadU32(file, headerOffset + 4);
        uint unsupported = flags & 0xFFFF & ~SupportedRequiredFlags;
        if (unsupported != 0)
        {
            throw new MultibootImageException(fileName, string.Concat(
                $"{fileName}: its Multiboot header requires features Modular does not provide (flags 0x{unsupported:x}; ",
                "bit 2 is a video mode); clear those bits in the header's flags."));
        }

        return (flags & AoutKludgeFlag) != 0
            ? ParseAoutKludge(file, fileName, headerOffset, flags)
            : ParseElf32(file, fileName, headerOffset, flags);
    }

    private static int FindHeader(byte[] file, string fileName)
    {
        int limit = Math.Min(file.Length, HeaderSearchLimit);
        int badChecksumAt = -1;
        for (int offset = 0; offset + 12 <= limit; offset += 4)
        {
            if (ReadU32(file, offset) != HeaderMagic)
            {
                continue;
            }

            if (unchecked(HeaderMagic + ReadU32(file, offset + 4) + ReadU32(file, offset + 8)) == 0)
            {
                return offset;
            }

            badChecksumAt = badChecksumAt < 0 ? offset : badChecksumAt;
        }

        if (badChecksumAt >= 0)
        {
            throw new MultibootImageException(fileName, string.Concat(
                $"{fileName}: the Multiboot magic at offset 0x{badChecksumAt:x} has a wrong checksum ",
                "(magic + flags + checksum must be 0 mod 2^32); fix the header's checksum field."));
        }

        throw new MultibootImageException(fileName, string.Concat(
            $"{fileName} has no Multiboot header in its first 8 KiB; build it as a Multiboot v1 kernel ",
            "(magic 0x1BADB002, flags, checksum on a 4-byte boundary near the start of the file)."));
    }

    private static MultibootImage ParseAoutKludge(byte[] file, string fileName, int headerOffset, uint flags)
    {
        if (headerOffset + 32 > file.Length)
        {
            throw new MultibootImageException(fileName, string.Concat(
                $"{fileName}: the Multiboot header at offset 0x{headerOffset:x} sets the a.out kludge (flags bit 16) ",
                "but the file ends before its address fields; add header_addr, load_addr, load_end_addr, bss_end_addr and entry_addr."));
        }

        uint headerAddr = ReadU32(file, headerOffset + 12);
        uint loadAddr = ReadU32(file, headerOffset + 16);
        uint loadEndAddr = ReadU32(file, headerOffset + 20);
        uint bssEndAddr = ReadU32(file, headerOffset + 24);
        uint entryAddr = ReadU32(file, headerOffset + 28);

        if (headerAddr < loadAddr || headerAddr - loadAddr > (uint)headerOffset)
        {
            throw new MultibootImageException(fileName, string.Concat(
                $"{fileName}: the Multiboot header's load_addr 0x{loadAddr:x} does not fit header_addr 0x{headerAddr:x} ",
                $"at file offset 0x{headerOffset:x} (load_addr must lie between header_addr - 0x{headerOffset:x} and header_addr); fix the linker script."));
        }

        int fileOffset = headerOffset - (int)(headerAddr - loadAddr);
        long fileSize = loadEndAddr == 0 ? file.Length - fileOffset : (long)loadEndAddr - loadAddr;
        if (fileSize < 0 || fileOffset + fileSize > file.Length)
        {
            throw new MultibootImageException(fileName, string.Concat(
                $"{fileName}: the Multiboot header's load_end_addr 0x{loadEndAddr:x} lies outside the file ",
                $"(load_addr 0x{loadAddr:x} is file offset 0x{fileOffset:x}, the file has 0x{file.Length:x} bytes); fix the linker script."));
        }

        ulong memorySize = (ulong)fileSize;
        if (bssEndAddr != 0)
        {
            if (bssEndAddr < loadAddr + (ulong)fileSize)
            {
                throw new MultibootImageException(fileName, string.Concat(
                    $"{fileName}: the Multiboot header's bss_end_addr 0x{bssEndAddr:x} lies before the end of the loaded ",
                    $"image 0x{loadAddr + (ulong)fileSize:x}; set it to the end of bss, or to 0 for no bss."));
            }

            memorySize = bssEndAddr - (ulong)loadAddr;
        }

        if (entryAddr < loadAddr || entryAddr >= loadAddr + memorySize)
        {
            throw new MultibootImageException(fileName, string.Concat(
                $"{fileName}: the Multiboot header's entry_addr 0x{entryAddr:x} lies outside the image ",
                $"0x{loadAddr:x}-0x{loadAddr + memorySize:x}; point it at the kernel's 32-bit entry code."));
        }

        var segment = new MultibootSegment(new GuestPhysicalAddress(loadAddr), fileOffset, (int)fileSize, memorySize);
        return new MultibootImage(fileName, file, headerOffset, flags, MultibootImageFormat.AoutKludge,
            new GuestPhysicalAddress(entryAddr), [segment]);
    }

    private static uint ReadU32(byte[] file, int offset) =>
        BinaryPrimitives.ReadUInt32LittleEndian(file.AsSpan(offset, 4));

}
