using System.Buffers.Binary;
using Modular.Core.Boot;
using static Modular.Tests.Boot.TestKernels;

namespace Modular.Tests.Boot;

/// <summary>Every refusal of the Multiboot loader, asserted as the whole sentence a user reads.</summary>
[TestClass]
public sealed class MultibootImageErrorTests
{
    private static void AssertParseError(byte[] file, string fileName, string expected)
    {
        var error = Assert.ThrowsExactly<MultibootImageException>(() => MultibootImage.Parse(file, fileName));
        Assert.AreEqual(expected, error.Message);
        Assert.AreEqual(fileName, error.FileName);
    }

    [TestMethod]
    public void NoHeader() => AssertParseError(new byte[100], "none.bin",
        "none.bin has no Multiboot header in its first 8 KiB; build it as a Multiboot v1 kernel " +
        "(magic 0x1BADB002, flags, checksum on a 4-byte boundary near the start of the file).");

    [TestMethod]
    public void HeaderBeyondTheFirst8KiB()
    {
        byte[] file = new byte[8192 + 64];
        WriteHeader(file, 8192, AoutKludge);
        AssertParseError(file, "late.bin",
            "late.bin has no Multiboot header in its first 8 KiB; build it as a Multiboot v1 kernel " +
            "(magic 0x1BADB002, flags, checksum on a 4-byte boundary near the start of the file).");
    }

    [TestMethod]
    public void WrongChecksum()
    {
        byte[] file = Kludge(0x100, 0x20, 0x100020, 0x100000, 0, 0, 0x100040);
        BinaryPrimitives.WriteUInt32LittleEndian(file.AsSpan(0x28), 0);
        AssertParseError(file, "bad.bin",
            "bad.bin: the Multiboot magic at offset 0x20 has a wrong checksum (magic + flags + checksum must be 0 mod 2^32); " +
            "fix the header's checksum field.");
    }

    [TestMethod]
    public void VideoModeRequested() => AssertParseError(
        Kludge(0x100, 0x20, 0x100020, 0x100000, 0, 0, 0x100040, flags: AoutKludge | 4), "video.bin",
        "video.bin: its Multiboot header requires features Modular does not provide (flags 0x4; bit 2 is a video mode); " +
        "clear those bits in the header's flags.");

    [TestMethod]
    public void KludgeFieldsCutOffByTheEndOfTheFile()
    {
        byte[] file = new byte[0x20];
        WriteHeader(file, 0x10, AoutKludge);
        AssertParseError(file, "short.bin",
            "short.bin: the Multiboot header at offset 0x10 sets the a.out kludge (flags bit 16) but the file ends before " +
            "its address fields; add header_addr, load_addr, load_end_addr, bss_end_addr and entry_addr.");
    }

    [TestMethod]
    public void LoadAddrAboveHeaderAddr() => AssertParseError(
        Kludge(0x100, 0x20, 0x100020, 0x100040, 0, 0, 0x100040), "k.bin",
        "k.bin: the Multiboot header's load_addr 0x100040 does not fit header_addr 0x100020 at file offset 0x20 " +
        "(load_addr must lie between header_addr - 0x20 and header_addr); fix the linker script.");

    [TestMethod]
    public void LoadAddrBeforeTheStartOfTheFile() => AssertParseError(
        Kludge(0x100, 0x20, 0x100020, 0xFFF00, 0, 0, 0x100040), "k.bin",
        "k.bin: the Multiboot header's load_addr 0xfff00 does not fit header_addr 0x100020 at file offset 0x20 " +
        "(load_addr must lie between header_addr - 0x20 and header_addr); fix the linker script.");

    [TestMethod]
    public void LoadEndBeyondTheFile() => AssertParseError(
        Kludge(0x100, 0x20, 0x100020, 0x100000, 0x100200, 0, 0x100040), "k.bin",
        "k.bin: the Multiboot header's load_end_addr 0x100200 lies outside the file (load_addr 0x100000 is file offset 0x0, " +
        "the file has 0x100 bytes); fix the linker script.");

    [TestMethod]
    public void LoadEndBelowLoadAddr() => AssertParseError(
        Kludge(0x100, 0x20, 0x100020, 0x100000, 0xFF000, 0, 0x100040), "k.bin",
        "k.bin: the Multiboot header's load_end_addr 0xff000 lies outside the file (load_addr 0x100000 is file offset 0x0, " +
        "the file has 0x100 bytes); fix the linker script.");

    [TestMethod]
    public void BssEndBeforeTheImageEnds() => AssertParseError(
        Kludge(0x100, 0x20, 0x100020, 0x100000, 0x100100, 0x100080, 0x100040), "k.bin",
        "k.bin: the Multiboot header's bss_end_addr 0x100080 lies before the end of the loaded image 0x100100; " +
        "set it to the end of bss, or to 0 for no bss.");

    [TestMethod]
    public void EntryOutsideTheImage() => AssertParseError(
        Kludge(0x100, 0x20, 0x100020, 0x100000, 0x100100, 0x102000, 0x200000), "k.bin",
        "k.bin: the Multiboot header's entry_addr 0x200000 lies outside the image 0x100000-0x102000; " +
        "point it at the kernel's 32-bit entry code.");

    [TestMethod]
    public void NeitherKludgeNorElf32()
    {
        byte[] file = new byte[0x100];
        WriteHeader(file, 0x40, 0);
        AssertParseError(file, "raw.bin",
            "raw.bin: its Multiboot header does not set the a.out kludge (flags bit 16) and the file is not an ELF32 image, " +
            "so nothing says where to load it; link it as ELF32 (ld -m elf_i386) or fill in the header's address fields " +
            "and set flags bit 16.");
    }

    [TestMethod]
    public void Elf64() => AssertParseError(
        Elf32(0x100010, [new Segment(1, 0x100, 0x100000, 0x100000, 0x100, 0x100)], elfClass: 2), "k64.elf",
        "k64.elf is a 64-bit ELF file; Multiboot v1 loads ELF32 kernels only: link it with ld -m elf_i386 " +
        "(64-bit code can follow the 32-bit entry), or set the a.out kludge (flags bit 16).");

    [TestMethod]
    public void ElfOfUnknownClass() => AssertParseError(
        Elf32(0x100010, [new Segment(1, 0x100, 0x100000, 0x100000, 0x100, 0x100)], elfClass: 3), "k.elf",
        "k.elf: its ELF header is not a little-endian ELF32 header (class 3, data 1, 1024 bytes); " +
        "link it as ELF32 for i386 (ld -m elf_i386).");

    [TestMethod]
    public void ElfForAnotherMachine() => AssertParseError(
        Elf32(0x100010, [new Segment(1, 0x100, 0x100000, 0x100000, 0x100, 0x100)], machine: 40), "arm.elf",
        "arm.elf: its ELF machine is 40, not i386 (3); link it for i386 (ld -m elf_i386).");

    [TestMethod]
    public void ProgramHeaderTableOutsideTheFile()
    {
        byte[] file = Elf32(0x100010, [new Segment(1, 0x100, 0x100000, 0x100000, 0x100, 0x100)]);
        BinaryPrimitives.WriteUInt16LittleEndian(file.AsSpan(44), 200);
        AssertParseError(file, "k.elf",
            "k.elf: its ELF program header table (offset 0x34, 200 entries of 32 bytes) does not fit in the file " +
            "(1024 bytes); the file is truncated or corrupt.");
    }

    [TestMethod]
    public void SegmentBeyondTheFile() => AssertParseError(
        Elf32(0x100010, [new Segment(1, 0x300, 0x100000, 0x100000, 0x200, 0x200)]), "k.elf",
        "k.elf: ELF segment 0 takes file bytes 0x300-0x500, beyond the end of the file (0x400 bytes); " +
        "the file is truncated or corrupt.");

    [TestMethod]
    public void SegmentWithMoreFileThanMemoryBytes() => AssertParseError(
        Elf32(0x100010, [new Segment(1, 0x100, 0x100000, 0x100000, 0x100, 0x80)]), "k.elf",
        "k.elf: ELF segment 0 has more file bytes (0x100) than memory bytes (0x80); the file is corrupt.");

    [TestMethod]
    public void NoLoadableSegment() => AssertParseError(
        Elf32(0x100010, [new Segment(4, 0x100, 0x100000, 0x100000, 0x10, 0x10)]), "k.elf",
        "k.elf: its ELF file has no loadable (PT_LOAD) segment; link the kernel's code into a loadable segment.");

    [TestMethod]
    public void EntryInNoSegment() => AssertParseError(
        Elf32(0x500000, [new Segment(1, 0x100, 0x100000, 0x100000, 0x100, 0x100)]), "k.elf",
        "k.elf: its ELF entry point 0x500000 lies in no loadable segment; point ENTRY() at the kernel's 32-bit entry code.");
}
