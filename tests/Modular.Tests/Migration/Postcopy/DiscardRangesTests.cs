using Modular.Core.Memory;
using Modular.Core.Migration.Engine;

namespace Modular.Tests.Migration.Postcopy;

/// <summary>The source's discard set: sentmap &amp; migration bitmap, as host-page-aligned byte ranges.</summary>
[TestClass]
public sealed class DiscardRangesTests
{
    [TestMethod]
    public void OnlyPagesSentAndDirtyAgain_AreDiscarded_InRuns()
    {
        var sent = new DirtyBitmap(64);
        var dirty = new DirtyBitmap(64);
        sent.SetRange(0, 10);
        dirty.SetRange(2, 3);   // 2,3,4: sent and dirty
        dirty.Set(7);           // sent and dirty
        dirty.Set(20);          // dirty, never sent: nothing to discard
        List<(ulong Start, ulong Length)> ranges = OutgoingMigration.DiscardRanges(sent, dirty, 4096);
        CollectionAssert.AreEqual(new List<(ulong, ulong)> { (2 * 4096, 3 * 4096), (7 * 4096, 4096) }, ranges);
    }

    [TestMethod]
    public void HugePages_WidenToWholeHostPages_AndMarkThemDirty()
    {
        var sent = new DirtyBitmap(2048);
        var dirty = new DirtyBitmap(2048);
        sent.SetAll();
        dirty.Set(5);      // inside host page 0 (512 target pages of 2 MiB)
        dirty.Set(600);    // inside host page 1: adjacent, one run
        List<(ulong Start, ulong Length)> ranges = OutgoingMigration.DiscardRanges(sent, dirty, 2 << 20);
        CollectionAssert.AreEqual(new List<(ulong, ulong)> { (0, 4UL << 20) }, ranges);
        Assert.AreEqual(1024L, dirty.Count(), "the whole host pages must be resent");
    }
}
