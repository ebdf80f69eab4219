using Modular.Abstractions.Memory;
using Modular.Core.Boot;
using static Modular.Tests.Boot.TestKernels;

namespace Modular.Tests.Boot;

[TestClass]
public sealed class MultibootLoadTests
{
    private const ulong MiB = 1UL << 20;
    private const ulong GiB = 1UL << 30;

    [TestMethod]
    public void RealGuestIsCopiedAndItsBssZeroed()
    {
        string path = GuestPath("ab-guest.elf");
        byte[] file = File.ReadAllBytes(path);
        MultibootImage image = MultibootImage.Parse(file, path);
        MultibootSegment segment = image.Segments[0];
        var memory = new SparseGuestMemory(PcRamLayout.For(256 * MiB));
        byte[] garbage = new byte[segment.MemorySize - (ulong)segment.FileSize];
        garbage.AsSpan().Fill(0xCC);
        memory.Write(segment.Address.Add((ulong)segment.FileSize), garbage);

        MultibootBoot boot = image.Load(memory, PcRamLayout.For(256 * MiB));

        Assert.AreEqual(new MultibootBoot(image.Entry, new GuestPhysicalAddress(0x9000)), boot);
        byte[] loaded = new byte[segment.MemorySize];
        memory.Read(segment.Address, loaded);
        CollectionAssert.AreEqual(file.AsSpan(segment.FileOffset, segment.FileSize).ToArray(), loaded[..segment.FileSize]);
        Assert.IsTrue(loaded.AsSpan(segment.FileSize).IndexOfAnyExcept((byte)0) < 0, "bss must be zeroed");
    }

    [TestMethod]
    public void Elf32SegmentsAreCopiedAtTheirPhysicalAddresses()
    {
        byte[] file = Elf32(0x100010,
        [
            new Segment(1, 0x100, 0x100000, 0x100000, 0x100, 0x2000),
            new Segment(1, 0x200, 0xC0300000, 0x300000, 0x80, 0x80),
        ]);
        var ram = PcRamLayout.For(16 * MiB);
        var memory = new SparseGuestMemory(ram);

        MultibootImage.Parse(file, "k.elf").Load(memory, ram);

        byte[] first = new byte[0x2000];
        memory.Read(new GuestPhysicalAddress(0x100000), first);
        CollectionAssert.AreEqual(file[0x100..0x200], first[..0x100]);
        Assert.IsTrue(first.AsSpan(0x100).IndexOfAnyExcept((byte)0) < 0);
        byte[] second = new byte[0x80];
        memory.Read(new GuestPhysicalAddress(0x300000), second);
        CollectionAssert.AreEqual(file[0x200..0x280], second);
    }

    [TestMethod]
    public void InfoBlockFor256MiB()
    {
        var ram = PcRamLayout.For(256 * MiB);
        var memory = new SparseGuestMemory(ram);

        MultibootImage.ReadFile(GuestPath("ab-guest.elf")).Load(memory, ram);

        Assert.AreEqual(0x41u, memory.ReadU32(0x9000), "flags: mem_* and mmap_*");
        Assert.AreEqual(639u, memory.ReadU32(0x9004), "mem_lower");
        Assert.AreEqual((uint)((256 * MiB) - MiB) / 1024, memory.ReadU32(0x9008), "mem_upper");
        Assert.AreEqual(4u * 24, memory.ReadU32(0x9000 + 44), "mmap_length");
        Assert.AreEqual(0x9100u, memory.ReadU32(0x9000 + 48), "mmap_addr");
        AssertMap(memory,
        [
            (0, 0x9FC00, 1),
            (0x9FC00, 0x400, 2),
            (0xF0000, 0x10000, 2),
            (0x100000, (256 * MiB) - MiB, 1),
        ]);
    }

    [TestMethod]
    public void InfoBlockFor5GiBPutsRamAbove4GiB()
    {
        var ram = PcRamLayout.For(5 * GiB);
        var memory = new SparseGuestMemory(ram);

        MultibootImage.ReadFile(GuestPath("ab-guest.elf")).Load(memory, ram);

        Assert.AreEqual((uint)((3 * GiB) - MiB) / 1024, memory.ReadU32(0x9008), "mem_upper stops at the 3 GiB hole");
        Assert.AreEqual(5u * 24, memory.ReadU32(0x9000 + 44));
        AssertMap(memory,
        [
            (0, 0x9FC00, 1),
            (0x9FC00, 0x400, 2),
            (0xF0000, 0x10000, 2),
            (0x100000, (3 * GiB) - MiB, 1),
            (4 * GiB, 2 * GiB, 1),
        ]);
    }

    [TestMethod]
    public void PcRamLayoutSplitsAbove3GiB()
    {
        CollectionAssert.AreEqual(
            new[] { new GuestRamRange(new GuestPhysicalAddress(0), 3 * GiB) },
            PcRamLayout.For(3 * GiB).ToArray());
        CollectionAssert.AreEqual(
            new[] { new GuestRamRange(new GuestPhysicalAddress(0), 3 * GiB), new GuestRamRange(new GuestPhysicalAddress(4 * GiB), 1) },
            PcRamLayout.For((3 * GiB) + 1).ToArray());
    }

    [TestMethod]
    public void SegmentOutsideRam()
    {
        var ram = PcRamLayout.For(2 * MiB);
        MultibootImage image = MultibootImage.Parse(Kludge(0x100, 0x20, 0x100020, 0x100000, 0, 0x300000, 0x100040), "k.bin");

        var error = Assert.ThrowsExactly<MultibootLoadException>(() => image.Load(new SparseGuestMemory(ram), ram));

        Assert.AreEqual(
            "k.bin: its segment 0x100000-0x300000 lies outside guest RAM (0x0-0x200000); " +
            "give the guest more RAM or link the kernel at a lower address.",
            error.Message);
        Assert.AreEqual("k.bin", error.FileName);
    }

    [TestMethod]
    public void SegmentInTheHoleBelow4GiB()
    {
        var ram = PcRamLayout.For(5 * GiB);
        MultibootImage image = MultibootImage.Parse(Kludge(0x100, 0x20, 0xC0000020, 0xC0000000, 0, 0, 0xC0000040), "hole.bin");

        var error = Assert.ThrowsExactly<MultibootLoadException>(() => image.Load(new SparseGuestMemory(ram), ram));

        Assert.AreEqual(
            "hole.bin: its segment 0xc0000000-0xc0000100 lies outside guest RAM (0x0-0xc0000000, 0x100000000-0x180000000); " +
            "give the guest more RAM or link the kernel at a lower address.",
            error.Message);
    }

    [TestMethod]
    public void SegmentOverTheInfoBlock()
    {
        var ram = PcRamLayout.For(16 * MiB);
        MultibootImage image = MultibootImage.Parse(Kludge(0x100, 0x20, 0x8020, 0x8000, 0, 0x9800, 0x8040), "low.bin");
        var memory = new SparseGuestMemory(ram);

        var error = Assert.ThrowsExactly<MultibootLoadException>(() => image.Load(memory, ram));

        Assert.AreEqual(
            "low.bin: its segment 0x8000-0x9800 overlaps 0x9000-0xa000, where Modular writes the Multiboot info block; " +
            "link the kernel elsewhere (Modular's test guests load at 0x10000).",
            error.Message);
        Assert.AreEqual(0, memory.PagesTouched, "nothing is written when the image does not fit");
    }

    [TestMethod]
    public void RamThatDoesNotCoverTheInfoBlock()
    {
        GuestRamRange[] ram = [new GuestRamRange(new GuestPhysicalAddress(MiB), 16 * MiB)];
        MultibootImage image = MultibootImage.Parse(Kludge(0x100, 0x20, 0x200020, 0x200000, 0, 0, 0x200040), "k.bin");

        var error = Assert.ThrowsExactly<MultibootLoadException>(() => image.Load(new SparseGuestMemory(ram), ram));

        Assert.AreEqual(
            "k.bin: guest RAM (0x100000-0x1100000) does not cover 0x9000-0xa000, where Modular writes the Multiboot info block; " +
            "give the guest RAM from address 0.",
            error.Message);
    }

    private static void AssertMap(SparseGuestMemory memory, (ulong Base, ulong Length, uint Type)[] expected)
    {
        ulong at = 0x9100;
        foreach ((ulong @base, ulong length, uint type) in expected)
        {
            Assert.AreEqual(20u, memory.ReadU32(at), $"size field of the entry at 0x{at:x}");
            Assert.AreEqual(@base, memory.ReadU64(at + 4), $"base of the entry at 0x{at:x}");
            Assert.AreEqual(length, memory.ReadU64(at + 12), $"length of the entry at 0x{at:x}");
            Assert.AreEqual(type, memory.ReadU32(at + 20), $"type of the entry at 0x{at:x}");
            at += 24;
        }

        Assert.AreEqual(0u, memory.ReadU32(at), "nothing after the last entry");
    }
}
