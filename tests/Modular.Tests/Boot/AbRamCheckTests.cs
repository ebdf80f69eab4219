using Modular.Abstractions.Memory;
using Modular.Core.Boot;
using Modular.Core.Verification;

namespace Modular.Tests.Boot;

[TestClass]
public sealed class AbRamCheckTests
{
    private const ulong MiB = 1UL << 20;
    private const ulong GiB = 1UL << 30;
    private static readonly IReadOnlyList<GuestRamRange> Ram16MiB = PcRamLayout.For(16 * MiB);

    private static AbRamCheckResult Check(Func<ulong, byte> firstByte) =>
        AbRamCheck.Check(new FirstByteMemory(Ram16MiB, firstByte), Ram16MiB);

    [TestMethod]
    public void AllPagesEqualPasses()
    {
        AbRamCheckResult result = Check(_ => 5);

        Assert.IsTrue(result.Passed, result.Message);
        Assert.AreEqual(3840UL, result.PagesChecked, "1 MiB to 16 MiB");
        Assert.AreEqual((byte)5, result.FirstByte);
        Assert.IsNull(result.StepAddress);
        Assert.AreEqual(
            "A/B RAM check passed: 3840 pages from 0x100000 to 0x1000000, first byte 0x05, no step (the guest was between passes, or halted).",
            result.Message);
    }

    [TestMethod]
    public void OneStepDownByOnePasses()
    {
        AbRamCheckResult result = Check(address => address < 8 * MiB ? (byte)6 : (byte)5);

        Assert.IsTrue(result.Passed, result.Message);
        Assert.AreEqual(new GuestPhysicalAddress(8 * MiB), result.StepAddress);
        Assert.AreEqual(
            "A/B RAM check passed: 3840 pages from 0x100000 to 0x1000000, first byte 0x06, one step down by one at 0x800000 (the guest was mid-pass).",
            result.Message);
    }

    [TestMethod]
    public void StepAcrossTheWrapFrom0x00To0xffPasses()
    {
        AbRamCheckResult result = Check(address => address < 8 * MiB ? (byte)0x00 : (byte)0xFF);

        Assert.IsTrue(result.Passed, result.Message);
        Assert.AreEqual(new GuestPhysicalAddress(8 * MiB), result.StepAddress);
    }

    [TestMethod]
    public void TwoStepsFail()
    {
        AbRamCheckResult result = Check(address => address < 4 * MiB ? (byte)7 : address < 8 * MiB ? (byte)6 : (byte)5);

        Assert.IsFalse(result.Passed);
        Assert.AreEqual(new GuestPhysicalAddress(4 * MiB), result.StepAddress);
        Assert.AreEqual(new GuestPhysicalAddress(8 * MiB), result.FirstBadAddress);
        Assert.AreEqual((byte)6, result.ExpectedByte);
        Assert.AreEqual((byte)5, result.SeenByte);
        Assert.AreEqual(2048UL, result.BadPages, "a bad page never becomes the reference, as in QEMU");
        Assert.AreEqual(
            "A/B RAM check failed: 3840 pages from 0x100000 to 0x1000000, first byte 0x07, one step down by one at 0x400000 " +
            "(the guest was mid-pass); at 0x800000 the first byte is 0x05 where 0x06 was expected, and 2048 page(s) in all " +
            "break the rule that each page's first byte equals the previous page's except one step down by one: guest RAM " +
            "was lost or corrupted.",
            result.Message);
    }

    [TestMethod]
    public void StepDownByTwoFails()
    {
        AbRamCheckResult result = Check(address => address < 8 * MiB ? (byte)7 : (byte)5);

        Assert.IsFalse(result.Passed);
        Assert.IsNull(result.StepAddress);
        Assert.AreEqual(new GuestPhysicalAddress(8 * MiB), result.FirstBadAddress);
        Assert.AreEqual((byte)7, result.ExpectedByte);
        Assert.AreEqual((byte)5, result.SeenByte);
    }

    [TestMethod]
    public void StepUpFails()
    {
        AbRamCheckResult result = Check(address => address < 8 * MiB ? (byte)5 : (byte)6);

        Assert.IsFalse(result.Passed);
        Assert.AreEqual(new GuestPhysicalAddress(8 * MiB), result.FirstBadAddress);
    }

    [TestMethod]
    public void OneZeroedPageFailsAndCountsOnce()
    {
        // A page the migration never delivered reads as zero.
        AbRamCheckResult result = Check(address => address == 10 * MiB ? (byte)0 : (byte)9);

        Assert.IsFalse(result.Passed);
        Assert.AreEqual(1UL, result.BadPages);
        Assert.AreEqual(new GuestPhysicalAddress(10 * MiB), result.FirstBadAddress);
    }

    [TestMethod]
    public void StepAbove4GiBIsFoundAndTheHoleSkipped()
    {
        IReadOnlyList<GuestRamRange> ram = PcRamLayout.For(5 * GiB);
        var memory = new FirstByteMemory(ram, address => address < (4 * GiB) + (512 * MiB) ? (byte)3 : (byte)2);

        AbRamCheckResult byRanges = AbRamCheck.Check(memory, ram);
        AbRamCheckResult byAddresses = AbRamCheck.Check(memory, new GuestPhysicalAddress(MiB), new GuestPhysicalAddress(6 * GiB));

        ulong expectedPages = ((3 * GiB) - MiB + (2 * GiB)) / 4096;
        foreach (AbRamCheckResult result in new[] { byRanges, byAddresses })
        {
            Assert.IsTrue(result.Passed, result.Message);
            Assert.AreEqual(expectedPages, result.PagesChecked);
            Assert.AreEqual(new GuestPhysicalAddress((4 * GiB) + (512 * MiB)), result.StepAddress);
        }
    }

    [TestMethod]
    public void TheRangeOverloadChecksFromTheStartItIsGiven()
    {
        // Below 2 MiB the bytes would fail; starting there they are not read.
        var memory = new FirstByteMemory(Ram16MiB, address => address < 2 * MiB ? (byte)0x77 : (byte)1);

        Assert.IsFalse(AbRamCheck.Check(memory, Ram16MiB).Passed);
        AbRamCheckResult result = AbRamCheck.Check(memory, Ram16MiB, 2 * MiB);
        Assert.IsTrue(result.Passed, result.Message);
        Assert.AreEqual(3584UL, result.PagesChecked);
    }

    [TestMethod]
    public void NoRamInTheRangeFails()
    {
        var memory = new FirstByteMemory(Ram16MiB, _ => 1);

        AbRamCheckResult result = AbRamCheck.Check(memory, new GuestPhysicalAddress(32 * MiB), new GuestPhysicalAddress(64 * MiB));

        Assert.IsFalse(result.Passed);
        Assert.AreEqual(
            "A/B RAM check failed: no guest RAM page between 0x2000000 and 0x4000000; check the RAM layout given to the check.",
            result.Message);
    }

    [TestMethod]
    public void AFreshlyLoadedGuestHasZeroedRamThatPasses()
    {
        // Before the guest runs, RAM above 1 MiB is zero: a valid A/B state (all equal).
        IReadOnlyList<GuestRamRange> ram = PcRamLayout.For(64 * MiB);
        var memory = new SparseGuestMemory(ram);
        MultibootImage.ReadFile(TestKernels.GuestPath("ab-guest.elf")).Load(memory, ram);

        AbRamCheckResult result = AbRamCheck.Check(memory, ram);

        Assert.IsTrue(result.Passed, result.Message);
        Assert.AreEqual((byte)0, result.FirstByte);
    }
}
