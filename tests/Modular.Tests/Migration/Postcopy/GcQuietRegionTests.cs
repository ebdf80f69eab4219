using System.Runtime;
using System.Runtime.CompilerServices;
using Microsoft.Extensions.Logging.Abstractions;
using Modular.Core.Migration.Postcopy;

namespace Modular.Tests.Migration.Postcopy;

/// <summary>
/// The no-GC region a postcopy side holds from its start (destination: ADVISE; source: just before
/// the switch) until postcopy ends: no collection inside it, one region per process (in-process
/// pairs run both sides: the second goes without), and ending it is safe twice and after the
/// budget ran out.
/// </summary>
[TestClass]
public sealed class GcQuietRegionTests
{
    [TestMethod]
    public void NoCollectionHappensInsideTheRegion_AndItEndsOnDispose()
    {
        using (GcQuietRegion region = GcQuietRegion.Enter(NullLogger.Instance, "test"))
        {
            Assert.IsTrue(region.IsActive, "the runtime granted the region");
            Assert.AreEqual(GCLatencyMode.NoGCRegion, GCSettings.LatencyMode);
            int before = GC.CollectionCount(0);
            // Garbage well within the budget, in small objects as postcopy makes them.
            for (int i = 0; i < 20_000; i++)
            {
                _ = new byte[512];
            }

            Assert.AreEqual(before, GC.CollectionCount(0), "no collection inside the region");
        }

        Assert.AreNotEqual(GCLatencyMode.NoGCRegion, GCSettings.LatencyMode, "the region ended with Dispose");
    }

    [TestMethod]
    public void ASecondSideInTheSameProcessGoesWithout_AndEndingIsHarmlessTwice()
    {
        GcQuietRegion first = GcQuietRegion.Enter(NullLogger.Instance, "destination");
        GcQuietRegion second = GcQuietRegion.Enter(NullLogger.Instance, "source");
        try
        {
            Assert.IsTrue(first.IsActive);
            Assert.IsFalse(second.IsActive, "one region per process");
            second.Dispose();
            Assert.AreEqual(GCLatencyMode.NoGCRegion, GCSettings.LatencyMode, "ending the one that went without leaves the other's region");
        }
        finally
        {
            first.Dispose();
            first.Dispose();
        }

        Assert.AreNotEqual(GCLatencyMode.NoGCRegion, GCSettings.LatencyMode);
    }

    [TestMethod]
    public void EndingAfterACollectionEndedTheRegionDoesNotThrow()
    {
        GcQuietRegion region = GcQuietRegion.Enter(NullLogger.Instance, "test");
        Assert.IsTrue(region.IsActive);
        GC.Collect(); // as a budget running out would: the runtime ends the region itself
        Assert.IsFalse(region.IsActive, "a collection ended the region");
        region.Dispose();
        Assert.AreNotEqual(GCLatencyMode.NoGCRegion, GCSettings.LatencyMode);
    }

    [TestMethod]
    public async Task SettlingWaitsForTheFinalizersACollectionQueued()
    {
        var finalized = new StrongBox<int>();
        MakeFinalizableGarbage(finalized, count: 8, busy: TimeSpan.FromMilliseconds(5));
        GC.Collect(); // queues their finalizers, as the region's own collection would
        Assert.IsTrue(await GcQuietRegion.SettleFinalizersAsync(TimeSpan.FromSeconds(10)), "the finalizer thread finishes within the limit");
        Assert.AreEqual(8, Volatile.Read(ref finalized.Value), "every queued finalizer has run when settling returns true");
    }

    [TestMethod]
    public async Task SettlingGivesUpAtTheLimitWhileAFinalizerBlocks()
    {
        var finalized = new StrongBox<int>();
        var release = new ManualResetEventSlim(); // not disposed: the finalizer may still wait on it when an assertion fails
        MakeFinalizableGarbage(finalized, count: 1, busy: TimeSpan.Zero, blockUntil: release);
        GC.Collect();
        Task<bool> settling = GcQuietRegion.SettleFinalizersAsync(TimeSpan.FromMilliseconds(100));
        bool returned = await Task.WhenAny(settling, Task.Delay(TimeSpan.FromSeconds(5))) == settling;
        release.Set();
        Assert.IsTrue(await GcQuietRegion.SettleFinalizersAsync(TimeSpan.FromSeconds(10)), "released, the finalizer ends");
        Assert.IsTrue(returned, "settling gives up near its limit instead of waiting for the blocked finalizer");
        Assert.IsFalse(await settling, "and says the finalizer thread was still busy");
        Assert.AreEqual(1, Volatile.Read(ref finalized.Value));
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void MakeFinalizableGarbage(StrongBox<int> finalized, int count, TimeSpan busy, ManualResetEventSlim? blockUntil = null)
    {
        for (int i = 0; i < count; i++)
        {
            _ = new Finalizable(finalized, busy, blockUntil);
        }
    }

    private sealed class Finalizable(StrongBox<int> finalized, TimeSpan busy, ManualResetEventSlim? blockUntil)
    {
        ~Finalizable()
        {
            Thread.Sleep(busy);
            blockUntil?.Wait();
            Interlocked.Increment(ref finalized.Value);
        }
    }
}
