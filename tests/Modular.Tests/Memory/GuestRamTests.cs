using Modular.Abstractions.Memory;
using Modular.Core.Memory;

namespace Modular.Tests.Memory;

[TestClass]
public sealed class GuestRamTests
{
    private const ulong MiB = 1 << 20;

    [TestMethod]
    public void OneBlockPcRamAtGpaZeroReadsBackWhatWasWritten()
    {
        using GuestRam ram = GuestRam.Create(4 * MiB);
        RamBlock block = ram.GetBlock("pc.ram");
        Assert.AreEqual(1, ram.Blocks.Count);
        Assert.AreEqual(new GuestPhysicalAddress(0), block.GuestBase);
        Assert.AreEqual(4 * MiB, block.Size);
        Assert.AreEqual(4 * MiB, ram.Size);
        Assert.AreEqual(4096UL, block.HostPageSize);
        Assert.AreNotEqual(0, block.HostAddress);
        Assert.AreEqual(4096, ram.PageSize);

        byte[] data = Enumerable.Range(0, 10_000).Select(i => (byte)(i * 7)).ToArray();
        ram.Write(new GuestPhysicalAddress(0x3FF0), data); // spans three pages
        byte[] back = new byte[data.Length];
        ram.Read(new GuestPhysicalAddress(0x3FF0), back);
        CollectionAssert.AreEqual(data, back);

        byte[] viaBlock = new byte[16];
        block.CopyOut(0x3FF0, viaBlock);
        CollectionAssert.AreEqual(data[..16], viaBlock);
    }

    [TestMethod]
    public void WriteMarksItsPagesDirtyAndSyncMovesThemIntoTheBitmap()
    {
        using GuestRam ram = GuestRam.Create(1 * MiB);
        RamBlock block = ram.Blocks[0];
        ram.Write(new GuestPhysicalAddress(0x1FFF), [1, 2]); // pages 1 and 2
        ram.Write(new GuestPhysicalAddress(0x9000), [3]);    // page 9
        block.CopyIn(0xA000, [4]);                           // incoming migration: not dirty

        var bitmap = new DirtyBitmap(block.PageCount);
        Assert.AreEqual(3, ram.SyncDirtyBitmap(block, bitmap));
        CollectionAssert.AreEqual(new long[] { 1, 2, 9 }, bitmap.EnumerateSet().ToArray());
        Assert.AreEqual(0, block.VmmDirty.Count(), "sync should take the VMM-side bits");

        var next = new DirtyBitmap(block.PageCount);
        Assert.AreEqual(0, ram.SyncDirtyBitmap(block, next));
    }

    [TestMethod]
    public void DiscardZeroesTheRangeAndIsZeroPageSeesIt()
    {
        using GuestRam ram = GuestRam.Create(1 * MiB);
        RamBlock block = ram.Blocks[0];
        Assert.IsTrue(block.IsZeroPage(0x5000));
        ram.Write(new GuestPhysicalAddress(0x5FFF), [0xAB]);
        ram.Write(new GuestPhysicalAddress(0x6000), [0xCD]);
        Assert.IsFalse(block.IsZeroPage(0x5000));

        block.Discard(0x5000, 0x1000);
        Assert.IsTrue(block.IsZeroPage(0x5000));
        Assert.IsFalse(block.IsZeroPage(0x6000), "discard went beyond its range");

        var error = Assert.ThrowsExactly<ArgumentException>(() => block.Discard(0x5001, 0x1000));
        StringAssert.Contains(error.Message, "Discard of pc.ram offset 0x5001 length 0x1000 is not aligned to the host page size 4096");
    }

    [TestMethod]
    public void AccessOutsideRamNamesTheRangeAndTheLayout()
    {
        using GuestRam ram = GuestRam.Create(1 * MiB);
        Assert.IsTrue(ram.Contains(new GuestPhysicalAddress(0xFF000), 0x1000));
        Assert.IsFalse(ram.Contains(new GuestPhysicalAddress(0xFF001), 0x1000));
        var error = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => ram.Write(new GuestPhysicalAddress(0xFFFFF), [1, 2]));
        StringAssert.Contains(error.Message, "Guest range 0xfffff+0x2 is not inside guest RAM (pc.ram 0x0-0xfffff)");
    }

    [TestMethod]
    public void MoreThanThreeGibIsOneBlockInTwoRegionsAroundTheHole()
    {
        using GuestRam ram = GuestRam.Create(5UL << 30); // MAP_NORESERVE: nothing is touched
        RamBlock block = ram.GetBlock("pc.ram");
        Assert.AreEqual(2, block.Regions.Count);
        Assert.AreEqual(new RamRegion(new GuestPhysicalAddress(0), 0, 3UL << 30), block.Regions[0]);
        Assert.AreEqual(new RamRegion(new GuestPhysicalAddress(4UL << 30), 3UL << 30, 2UL << 30), block.Regions[1]);
        Assert.IsFalse(ram.Contains(new GuestPhysicalAddress(3UL << 30), 1), "the 3-4 GiB hole is not RAM");

        ram.Write(new GuestPhysicalAddress((4UL << 30) + 0x10), [0x77]);
        byte[] back = new byte[1];
        block.CopyOut((3UL << 30) + 0x10, back);
        Assert.AreEqual(0x77, back[0]);
        Assert.IsTrue(block.VmmDirty.Test((long)((3UL << 30) / 4096)), "dirty bit is by block offset");
    }

    [TestMethod]
    public void SizeThatIsNotAPageMultipleIsRefusedClearly()
    {
        var error = Assert.ThrowsExactly<GuestRamAllocationException>(() => GuestRam.Create(MiB + 100));
        StringAssert.StartsWith(error.Message, "Guest RAM size 1048676 bytes (1 MiB) is not a positive multiple of the 4 KiB page size (4096 bytes)");

        var huge = Assert.ThrowsExactly<GuestRamAllocationException>(() => GuestRam.Create(3 * MiB, GuestRamBacking.HugeTlb2M));
        StringAssert.Contains(huge.Message, "is not a positive multiple of the 2 MiB huge page size (2097152 bytes)");
    }

    [TestMethod]
    public void HugePagesWithNoneReservedSayHowToReserveThem()
    {
        string reserved = File.ReadAllText("/proc/sys/vm/nr_hugepages").Trim();
        if (reserved != "0")
        {
            Assert.Inconclusive($"This host reserves {reserved} huge pages; the test needs 0.");
        }

        var error = Assert.ThrowsExactly<GuestRamAllocationException>(() => GuestRam.Create(64 * MiB, GuestRamBacking.HugeTlb2M));
        Assert.AreEqual(
            "Guest RAM wants 2 MiB huge pages, but none are reserved (/proc/sys/vm/nr_hugepages is 0). Reserve at least 32 with `echo 32 > /proc/sys/vm/nr_hugepages` as root, or use anonymous memory.",
            error.Message);
    }

    [TestMethod]
    public void MoreRamThanTheHostCanMapSaysSo()
    {
        var error = Assert.ThrowsExactly<GuestRamAllocationException>(() => GuestRam.Create(1UL << 50));
        StringAssert.StartsWith(error.Message, "The host cannot give 1073741824 MiB of guest RAM for block pc.ram (anonymous memory): mmap failed with ");
        StringAssert.Contains(error.Message, "Choose less memory or free some on the host.");
    }
}
