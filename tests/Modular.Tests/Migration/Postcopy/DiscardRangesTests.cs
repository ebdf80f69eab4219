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

    [TestMethod]
    public void HugePages_PartlySentHostPage_WithUnsentDirtyPages_IsDiscardedWhole()
    {
        // Host page 0: pages 0..99 sent and clean, 100..511 never sent (dirty). The destination holds
        // the huge page (present, partly zero), so it must be discarded and resent whole.
        // Host page 1: never sent at all: nothing to discard. Host page 2: sent and clean.
        var sent = new DirtyBitmap(1536);
        var dirty = new DirtyBitmap(1536);
        sent.SetRange(0, 100);
        dirty.SetRange(100, 412);
        dirty.SetRange(512, 512);
        sent.SetRange(1024, 512);
        List<(ulong Start, ulong Length)> ranges = OutgoingMigration.DiscardRanges(sent, dirty, 2 << 20);
        CollectionAssert.AreEqual(new List<(ulong, ulong)> { (0, 2UL << 20) }, ranges);
        Assert.AreEqual(1024L, dirty.Count(), "host page 0 whole and host page 1 must be sent");
        Assert.IsFalse(dirty.Test(1024));
    }
}
