using System.Buffers.Binary;
using Modular.Abstractions.Memory;

namespace Modular.Core.Boot;

/// <summary>The ELF32 half of Multiboot parsing: used when the header does not set the a.out kludge.</summary>
public sealed partial class MultibootImage
{
    private const int ElfHeaderSize = 52;
    private const int ElfProgramHeaderSize = 32;
    private const byte ElfClass32 = 1;
    private const byte ElfClass64 = 2;
    private const byte ElfDataLittleEndian = 1;
    private const ushort ElfMachine386 = 3;
    private const uint ElfSegmentLoad = 1;

    private static MultibootImage ParseElf32(byte[] file, string fileName, int headerOffset, uint flags)
    {
        bool isElf = file.Length >= 16 && file[0] == 0x7f && file[1] == (byte)'E' && file[2] == (byte)'L' && file[3] == (byte)'F';
        if (!isElf)
        {
            throw new MultibootImageException(fileName,
                $"{fileName}: its Multiboot header does not set the a.out kludge (flags bit 16) and the file is not " +
                "an ELF32 image, so nothing says where to load it; link it as ELF32 (ld -m elf_i386) or fill in the " +
                "header's address fields and set flags bit 16.");
        }

        if (file[4] == ElfClass64)
        {
            throw new MultibootImageException(fileName,
                $"{fileName} is a 64-bit ELF file; Multiboot v1 loads ELF32 kernels only: link it with ld -m elf_i386 " +
                "(64-bit code can follow the 32-bit entry), or set the a.out kludge (flags bit 16).");
        }

        if (file[4] != ElfClass32 || file[5] != ElfDataLittleEndian || file.Length < ElfHeaderSize)
        {
            throw new MultibootImageException(fileName,
                $"{fileName}: its ELF header is not a little-endian ELF32 header (class {file[4]}, data {file[5]}, " +
                $"{file.Length} bytes); link it as ELF32 for i386 (ld -m elf_i386).");
        }

        ushort machine = BinaryPrimitives.ReadUInt16LittleEndian(file.AsSpan(18, 2));
        if (machine != ElfMachine386)
        {
            throw new MultibootImageException(fileName,
                $"{fileName}: its ELF machine is {machine}, not i386 (3); link it for i386 (ld -m elf_i386).");
        }

        uint entry = ReadU32(file, 24);
        uint programHeaderOffset = ReadU32(file, 28);
        ushort programHeaderSize = BinaryPrimitives.ReadUInt16LittleEndian(file.AsSpan(42, 2));
        ushort programHeaderCount = BinaryPrimitives.ReadUInt16LittleEndian(file.AsSpan(44, 2));
        if (programHeaderSize < ElfProgramHeaderSize
            || programHeaderOffset + ((ulong)programHeaderCount * programHeaderSize) > (ulong)file.Length)
        {
            throw new MultibootImageException(fileName,
                $"{fileName}: its ELF program header table (offset 0x{programHeaderOffset:x}, {programHeaderCount} entries " +
                $"of {programHeaderSize} bytes) does not fit in the file ({file.Length} bytes); the file is truncated or corrupt.");
        }

        var segments = new List<MultibootSegment>();
        GuestPhysicalAddress? physicalEntry = null;
        for (int index = 0; index < programHeaderCount; index++)
        {
            int at = (int)programHeaderOffset + (index * programHeaderSize);
            if (ReadU32(file, at) != ElfSegmentLoad)
            {
                continue;
            }

            uint offset = ReadU32(file, at + 4);
            uint virtualAddress = ReadU32(file, at + 8);
            uint physicalAddress = ReadU32(file, at + 12);
            uint fileSize = ReadU32(file, at + 16);
            uint memorySize = ReadU32(file, at + 20);
            if ((ulong)offset + fileSize > (ulong)file.Length)
            {
                throw new MultibootImageException(fileName,
                    $"{fileName}: ELF segment {index} takes file bytes 0x{offset:x}-0x{(ulong)offset + fileSize:x}, " +
                    $"beyond the end of the file (0x{file.Length:x} bytes); the file is truncated or corrupt.");
            }

            if (fileSize > memorySize)
            {
                throw new MultibootImageException(fileName,
                    $"{fileName}: ELF segment {index} has more file bytes (0x{fileSize:x}) than memory bytes " +
                    $"(0x{memorySize:x}); the file is corrupt.");
            }

            if (memorySize == 0)
            {
                continue;
            }

            segments.Add(new MultibootSegment(new GuestPhysicalAddress(physicalAddress), (int)offset, (int)fileSize, memorySize));

            // Like GRUB and QEMU, load at p_paddr; an entry given as a virtual address inside this
            // segment is moved by the same distance, so a higher-half kernel still starts.
            if (physicalEntry is null && entry >= virtualAddress && entry - virtualAddress < memorySize)
            {
                physicalEntry = new GuestPhysicalAddress(physicalAddress + (ulong)(entry - virtualAddress));
            }
        }

        if (segments.Count == 0)
        {
            throw new MultibootImageException(fileName,
                $"{fileName}: its ELF file has no loadable (PT_LOAD) segment; link the kernel's code into a loadable segment.");
        }

        if (physicalEntry is null)
        {
            throw new MultibootImageException(fileName,
                $"{fileName}: its ELF entry point 0x{entry:x} lies in no loadable segment; point ENTRY() at the kernel's 32-bit entry code.");
        }

        return new MultibootImage(fileName, file, headerOffset, flags, MultibootImageFormat.Elf32, physicalEntry.Value, segments);
    }
}
