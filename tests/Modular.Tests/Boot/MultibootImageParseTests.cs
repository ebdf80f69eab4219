using System.Buffers.Binary;
using Modular.Abstractions.Memory;
using Modular.Core.Boot;
using static Modular.Tests.Boot.TestKernels;

namespace Modular.Tests.Boot;

[TestClass]
public sealed class MultibootImageParseTests
{
    [TestMethod]
    public void RealAbGuestParsesThroughTheAoutKludge()
    {
        string path = GuestPath("ab-guest.elf");
        byte[] file = File.ReadAllBytes(path);

        MultibootImage image = MultibootImage.ReadFile(path);

        Assert.AreEqual(MultibootImageFormat.AoutKludge, image.Format);
        Assert.AreEqual(path, image.FileName);
        Assert.AreEqual(0x1000, image.HeaderOffset, "ld puts the .image section at file offset 0x1000");
        Assert.AreEqual(MultibootImage.AoutKludgeFlag, image.Flags);
        Assert.HasCount(1, image.Segments);
        MultibootSegment segment = image.Segments[0];
        Assert.AreEqual(new GuestPhysicalAddress(0x10000), segment.Address);
        Assert.AreEqual(0x1000, segment.FileOffset);
        Assert.IsGreaterThan((ulong)segment.FileSize, segment.MemorySize, "the page tables and stack are bss");
        // The kludge's entry_addr and the ELF header's e_entry name the same symbol.
        Assert.AreEqual(new GuestPhysicalAddress(BinaryPrimitives.ReadUInt32LittleEndian(file.AsSpan(24))), image.Entry);
    }

    [TestMethod]
    [DataRow("fill-halt.elf")]
    [DataRow("exit-guest.elf")]
    public void EveryBuiltGuestParses(string name)
    {
        MultibootImage image = MultibootImage.ReadFile(GuestPath(name));

        Assert.AreEqual(MultibootImageFormat.AoutKludge, image.Format);
        Assert.AreEqual(new GuestPhysicalAddress(0x10000), image.Segments[0].Address);
    }

    [TestMethod]
    public void KludgeMapsLoadAddrToTheFileOffsetBeforeTheHeader()
    {
        // Header at file offset 0x40, header_addr 0x200040: so load_addr 0x200010 is file offset 0x10.
        byte[] file = Kludge(0x200, 0x40, 0x200040, 0x200010, 0x200110, 0x203000, 0x200060);

        MultibootImage image = MultibootImage.Parse(file, "k.bin");

        Assert.AreEqual(new MultibootSegment(new GuestPhysicalAddress(0x200010), 0x10, 0x100, 0x2FF0), image.Segments[0]);
        Assert.AreEqual(new GuestPhysicalAddress(0x200060), image.Entry);
    }

    [TestMethod]
    public void KludgeWithZeroLoadEndTakesTheRestOfTheFileAndZeroBssEndMeansNoBss()
    {
        byte[] file = Kludge(0x300, 0x20, 0x100020, 0x100000, 0, 0, 0x100040);

        MultibootSegment segment = MultibootImage.Parse(file, "k.bin").Segments[0];

        Assert.AreEqual(0x300, segment.FileSize);
        Assert.AreEqual(0x300UL, segment.MemorySize);
    }

    [TestMethod]
    public void HeaderIsFoundOnlyOnFourByteBoundaries()
    {
        byte[] file = Kludge(0x100, 0x20, 0x100020, 0x100000, 0, 0, 0x100040);
        byte[] shifted = new byte[file.Length + 2];
        file.CopyTo(shifted, 2);

        var error = Assert.ThrowsExactly<MultibootImageException>(() => MultibootImage.Parse(shifted, "odd.bin"));
        StringAssert.StartsWith(error.Message, "odd.bin has no Multiboot header in its first 8 KiB");
    }

    [TestMethod]
    public void Elf32WithoutKludgeLoadsItsProgramHeaders()
    {
        byte[] file = Elf32(0x100010,
        [
            new Segment(4, 0, 0, 0, 0, 0),                                  // PT_NOTE: skipped
            new Segment(1, 0x100, 0x100000, 0x100000, 0x100, 0x3000),
            new Segment(1, 0x200, 0x104000, 0x104000, 0x80, 0x80),
            new Segment(1, 0, 0x200000, 0x200000, 0, 0),                    // empty: skipped
        ]);

        MultibootImage image = MultibootImage.Parse(file, "k.elf");

        Assert.AreEqual(MultibootImageFormat.Elf32, image.Format);
        Assert.AreEqual(0x100, image.HeaderOffset);
        Assert.AreEqual(0u, image.Flags);
        Assert.AreEqual(new GuestPhysicalAddress(0x100010), image.Entry);
        CollectionAssert.AreEqual(
            new[]
            {
                new MultibootSegment(new GuestPhysicalAddress(0x100000), 0x100, 0x100, 0x3000),
                new MultibootSegment(new GuestPhysicalAddress(0x104000), 0x200, 0x80, 0x80),
            },
            image.Segments.ToArray());
    }

    [TestMethod]
    public void Elf32LoadsAtPhysicalAddressesAndMovesAVirtualEntryWithIt()
    {
        byte[] file = Elf32(0xC0100020, [new Segment(1, 0x100, 0xC0100000, 0x100000, 0x100, 0x1000)]);

        MultibootImage image = MultibootImage.Parse(file, "higher-half.elf");

        Assert.AreEqual(new GuestPhysicalAddress(0x100000), image.Segments[0].Address);
        Assert.AreEqual(new GuestPhysicalAddress(0x100020), image.Entry);
    }

    [TestMethod]
    public void TheKludgeWinsOverElfProgramHeaders()
    {
        // An ELF file whose Multiboot header sets bit 16: the header's addresses count, as in QEMU.
        byte[] file = Elf32(0x100010, [new Segment(1, 0x100, 0x100000, 0x100000, 0x100, 0x1000)]);
        byte[] kludge = Kludge(0x40, 0, 0x300100, 0x300000, 0, 0x301000, 0x300120);
        kludge.AsSpan(0, 32).CopyTo(file.AsSpan(0x100));

        MultibootImage image = MultibootImage.Parse(file, "both.elf");

        Assert.AreEqual(MultibootImageFormat.AoutKludge, image.Format);
        Assert.AreEqual(new GuestPhysicalAddress(0x300000), image.Segments[0].Address);
        Assert.AreEqual(0, image.Segments[0].FileOffset);
    }
}
