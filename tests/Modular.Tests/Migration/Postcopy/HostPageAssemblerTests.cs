using Modular.Abstractions.Faults;
using Modular.Core.Memory;
using Modular.Core.Migration.Postcopy;

namespace Modular.Tests.Migration.Postcopy;

/// <summary>
/// The destination's assembly of 2 MiB host pages after LISTEN (<see cref="HostPageAssembler"/>):
/// target pages in order become one placement of the whole host page; an all-ZERO host page one zero
/// page; a host page that comes twice finds itself present; a target page out of order is an error
/// naming the offsets. Real hugetlbfs RAM, a recording fault backend.
/// </summary>
[TestClass]
public sealed class HostPageAssemblerTests
{
    private const ulong HugePage = HugePageScope.HugePage;
    private const int Target = RamBlock.TargetPageSize;
    private static readonly byte[] Zero = new byte[Target];

    [TestMethod]
    public void TargetPagesInOrder_ArePlacedAsOneHostPage_WhenTheLastArrives()
    {
        using var scope = new HugePageScope();
        scope.Postcopy.Arm();
        var assembler = new HostPageAssembler(scope.Postcopy);

        // Host page 0 all data first, so stale staging bytes would show in host page 1's zero slots.
        AddHostPage(assembler, scope.Block, 0, isZero: _ => false);
        var expected = new byte[HugePage];
        for (ulong offset = HugePage; offset < 2 * HugePage; offset += Target)
        {
            bool zero = offset / Target % 5 == 3;
            assembler.Add(scope.Block, offset, zero ? Zero : HugePageScope.Pattern(offset), zero);
            if (!zero)
            {
                HugePageScope.Pattern(offset).CopyTo(expected, (int)(offset - HugePage));
            }

            if (offset + Target < 2 * HugePage)
            {
                Assert.HasCount(1, scope.Backend.Placed, $"host page 1 must not be placed before its last target page (placed after 0x{offset:x})");
                Assert.IsTrue(assembler.IsAssembling);
            }
        }

        Assert.IsFalse(assembler.IsAssembling);
        Assert.HasCount(2, scope.Backend.Placed);
        Assert.AreEqual(scope.Block.HostAddress + (nint)HugePage, scope.Backend.Placed[1].Address);
        CollectionAssert.AreEqual(expected, scope.Backend.Placed[1].Contents, "one placement of the whole host page, its target pages in order, ZERO records as zeros");
        Assert.AreEqual(1024UL, scope.Map.ReceivedCount);
        Assert.AreEqual(PageState.Received, scope.Map.GetState(1023));
    }

    [TestMethod]
    public void HostPageOfZeroRecords_IsPlacedAsOneZeroPage()
    {
        using var scope = new HugePageScope();
        scope.Postcopy.Arm();
        var assembler = new HostPageAssembler(scope.Postcopy);

        AddHostPage(assembler, scope.Block, HugePage, isZero: _ => true);

        Assert.IsEmpty(scope.Backend.Placed);
        CollectionAssert.AreEqual(new[] { (scope.Block.HostAddress + (nint)HugePage, HugePage) }, scope.Backend.ZeroPlaced);
        Assert.AreEqual(512UL, scope.Map.ReceivedCount);
        Assert.AreEqual(PageState.Missing, scope.Map.GetState(0));
        Assert.AreEqual(PageState.Received, scope.Map.GetState(512));
    }

    [TestMethod]
    public void HostPagePlacedTwice_FindsItselfPresent_AndItsPagesStayReceived()
    {
        using var scope = new HugePageScope();
        scope.Postcopy.Arm();
        var assembler = new HostPageAssembler(scope.Postcopy);

        AddHostPage(assembler, scope.Block, 0, isZero: _ => false);
        AddHostPage(assembler, scope.Block, 0, isZero: _ => false);

        CollectionAssert.AreEqual(new[] { PlaceResult.Placed, PlaceResult.AlreadyPresent }, scope.Backend.Results);
        Assert.AreEqual(512UL, scope.Map.ReceivedCount, "a host page that came twice is counted once");
        Assert.AreEqual(0UL, scope.Map.RequestedCount);
    }

    [TestMethod]
    public void TargetPageOutOfOrder_IsAnErrorNamingTheOffsets()
    {
        using var scope = new HugePageScope();
        scope.Postcopy.Arm();
        var assembler = new HostPageAssembler(scope.Postcopy);
        assembler.Add(scope.Block, HugePage, HugePageScope.Pattern(HugePage), isZero: false);

        var error = Assert.ThrowsExactly<HostPageAssemblyException>(() => assembler.Add(scope.Block, HugePage + 2 * Target, Zero, isZero: true));

        Assert.AreEqual(
            "Target page 0x202000 of RAM block 'pc.ram' arrived while host page 0x200000 of RAM block 'pc.ram' (0x200000 bytes) was being assembled and needed its target page 0x201000 next: after POSTCOPY_LISTEN the source must send each host page's target pages in order, with nothing between them.",
            error.Message);
        Assert.IsEmpty(scope.Backend.Placed);
    }

    [TestMethod]
    public void HostPageStartingMidway_IsAnErrorNamingTheHostPage()
    {
        using var scope = new HugePageScope();
        scope.Postcopy.Arm();
        var assembler = new HostPageAssembler(scope.Postcopy);

        var error = Assert.ThrowsExactly<HostPageAssemblyException>(() => assembler.Add(scope.Block, HugePage + Target, Zero, isZero: true));

        Assert.AreEqual(
            "Target page 0x201000 of RAM block 'pc.ram' arrived without the start of its 0x200000-byte host page 0x200000: after POSTCOPY_LISTEN the source must send each host page's target pages in order, from its first, with nothing between them.",
            error.Message);
    }

    [TestMethod]
    public void BeforeListen_TargetPagesAreCopiedStraightIntoRam()
    {
        using var scope = new HugePageScope();
        var assembler = new HostPageAssembler(scope.Postcopy);
        byte[] page = HugePageScope.Pattern(3 * Target);

        assembler.Add(scope.Block, 3 * Target, page, isZero: false);

        Assert.IsFalse(assembler.IsAssembling);
        Assert.IsEmpty(scope.Backend.Placed);
        var back = new byte[Target];
        scope.Block.CopyOut(3 * Target, back);
        CollectionAssert.AreEqual(page, back);
        Assert.AreEqual(PageState.Received, scope.Map.GetState(3));
        Assert.AreEqual(1UL, scope.Map.ReceivedCount);
    }

    private static void AddHostPage(HostPageAssembler assembler, RamBlock block, ulong hostOffset, Func<ulong, bool> isZero)
    {
        for (ulong offset = hostOffset; offset < hostOffset + HugePage; offset += Target)
        {
            bool zero = isZero(offset);
            assembler.Add(block, offset, zero ? Zero : HugePageScope.Pattern(offset), zero);
        }
    }
}
