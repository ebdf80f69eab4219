using System.Buffers.Binary;

namespace Modular.Tests.Boot;

/// <summary>Multiboot kernels for the tests: the real guests from the build, and hand-made images.</summary>
internal static class TestKernels
{
    public const uint Magic = 0x1BADB002;
    public const uint AoutKludge = 1u << 16;

    /// <summary>A guest built by guests/Modular.Guests.proj and copied beside the test assembly.</summary>
    public static string GuestPath(string name)
    {
        string path = Path.Combine(AppContext.BaseDirectory, "guests", name);
        Assert.IsTrue(File.Exists(path), $"{path} is missing: guests/Modular.Guests.proj should have built it.");
        return path;
    }

    /// <summary>
    /// A raw (non-ELF) image of <paramref name="fileLength"/> bytes, filled with 0x90, with an a.out
    /// kludge header at <paramref name="headerOffset"/>.
    /// </summary>
    public static byte[] Kludge(
        int fileLength, int headerOffset, uint headerAddr, uint loadAddr, uint loadEndAddr, uint bssEndAddr, uint entryAddr,
        uint flags = AoutKludge)
    {
        byte[] file = new byte[fileLength];
        file.AsSpan().Fill(0x90);
        WriteHeader(file, headerOffset, flags);
        Span<byte> fields = file.AsSpan(headerOffset + 12);
        BinaryPrimitives.WriteUInt32LittleEndian(fields[0..], headerAddr);
        BinaryPrimitives.WriteUInt32LittleEndian(fields[4..], loadAddr);
        BinaryPrimitives.WriteUInt32LittleEndian(fields[8..], loadEndAddr);
        BinaryPrimitives.WriteUInt32LittleEndian(fields[12..], bssEndAddr);
        BinaryPrimitives.WriteUInt32LittleEndian(fields[16..], entryAddr);
        return file;
    }

    /// <summary>Writes magic, flags and a correct checksum at <paramref name="offset"/>.</summary>
    public static void WriteHeader(byte[] file, int offset, uint flags)
    {
        BinaryPrimitives.WriteUInt32LittleEndian(file.AsSpan(offset), Magic);
        BinaryPrimitives.WriteUInt32LittleEndian(file.AsSpan(offset + 4), flags);
        BinaryPrimitives.WriteUInt32LittleEndian(file.AsSpan(offset + 8), unchecked(0u - Magic - flags));
    }

    /// <summary>One ELF program header for <see cref="Elf32"/>.</summary>
    public sealed record Segment(uint Type, uint Offset, uint VirtualAddress, uint PhysicalAddress, uint FileSize, uint MemorySize);

    /// <summary>
    /// A little-endian ELF32 i386 executable of <paramref name="fileLength"/> bytes: ELF header, program
    /// headers at offset 52, a Multiboot header (without the a.out kludge) at 0x100, the rest 0xCC.
    /// </summary>
    public static byte[] Elf32(uint entry, IReadOnlyList<Segment> segments, int fileLength = 0x400, byte elfClass = 1, ushort machine = 3)
    {
        byte[] file = new byte[fileLength];
        file.AsSpan().Fill(0xCC);
        file.AsSpan(0, 52 + (segments.Count * 32)).Clear();
        file[0] = 0x7f;
        file[1] = (byte)'E';
        file[2] = (byte)'L';
        file[3] = (byte)'F';
        file[4] = elfClass;
        file[5] = 1;   // little-endian
        file[6] = 1;   // EV_CURRENT
        Span<byte> header = file.AsSpan();
        BinaryPrimitives.WriteUInt16LittleEndian(header[16..], 2);      // ET_EXEC
        BinaryPrimitives.WriteUInt16LittleEndian(header[18..], machine);
        BinaryPrimitives.WriteUInt32LittleEndian(header[20..], 1);
        BinaryPrimitives.WriteUInt32LittleEndian(header[24..], entry);
        BinaryPrimitives.WriteUInt32LittleEndian(header[28..], 52);     // e_phoff
        BinaryPrimitives.WriteUInt16LittleEndian(header[40..], 52);     // e_ehsize
        BinaryPrimitives.WriteUInt16LittleEndian(header[42..], 32);     // e_phentsize
        BinaryPrimitives.WriteUInt16LittleEndian(header[44..], (ushort)segments.Count);
        for (int index = 0; index < segments.Count; index++)
        {
            Span<byte> program = file.AsSpan(52 + (index * 32), 32);
            Segment segment = segments[index];
            BinaryPrimitives.WriteUInt32LittleEndian(program[0..], segment.Type);
            BinaryPrimitives.WriteUInt32LittleEndian(program[4..], segment.Offset);
            BinaryPrimitives.WriteUInt32LittleEndian(program[8..], segment.VirtualAddress);
            BinaryPrimitives.WriteUInt32LittleEndian(program[12..], segment.PhysicalAddress);
            BinaryPrimitives.WriteUInt32LittleEndian(program[16..], segment.FileSize);
            BinaryPrimitives.WriteUInt32LittleEndian(program[20..], segment.MemorySize);
            BinaryPrimitives.WriteUInt32LittleEndian(program[24..], 7);
            BinaryPrimitives.WriteUInt32LittleEndian(program[28..], 0x1000);
        }

        WriteHeader(file, 0x100, 0);
        return file;
    }
}
