using Modular.Core.Migration.Postcopy;

namespace Modular.Tests.Migration.Postcopy;

[TestClass]
public sealed class PageStateMapTests
{
    [TestMethod]
    public void NewMapHasEveryPageMissing()
    {
        PageStateMap map = new(100);
        for (ulong page = 0; page < 100; page++)
        {
            Assert.AreEqual(PageState.Missing, map.GetState(page));
        }
        Assert.AreEqual(100UL, map.MissingCount);
        Assert.AreEqual(0UL, map.ReceivedCount);
        Assert.AreEqual(0UL, map.RequestedCount);
        Assert.IsFalse(map.IsComplete);
    }

    [TestMethod]
    public void MissingToRequestedNeedsARequest()
    {
        PageStateMap map = new(64);
        Assert.AreEqual(FaultOutcome.NeedsRequest, map.TryRequest(33));
        Assert.AreEqual(PageState.Requested, map.GetState(33));
        Assert.AreEqual(PageState.Missing, map.GetState(32));
        Assert.AreEqual(PageState.Missing, map.GetState(34));
        Assert.AreEqual(1UL, map.RequestedCount);
        Assert.AreEqual(63UL, map.MissingCount);
    }

    [TestMethod]
    public void RequestedPageIsNotRequestedAgain()
    {
        PageStateMap map = new(8);
        map.TryRequest(3);
        Assert.AreEqual(FaultOutcome.AlreadyRequested, map.TryRequest(3));
        Assert.AreEqual(PageState.Requested, map.GetState(3));
        Assert.AreEqual(1UL, map.RequestedCount);
    }

    [TestMethod]
    public void FaultOnReceivedPageWakesWithoutRequest()
    {
        PageStateMap map = new(8);
        map.MarkReceived(5);
        Assert.AreEqual(FaultOutcome.AlreadyReceived, map.TryRequest(5));
        Assert.AreEqual(PageState.Received, map.GetState(5));
        Assert.AreEqual(0UL, map.RequestedCount);
    }

    [TestMethod]
    public void MissingToReceived()
    {
        PageStateMap map = new(8);
        Assert.AreEqual(PageState.Missing, map.MarkReceived(7));
        Assert.AreEqual(PageState.Received, map.GetState(7));
        Assert.AreEqual(1UL, map.ReceivedCount);
        Assert.AreEqual(7UL, map.MissingCount);
    }

    [TestMethod]
    public void RequestedToReceived()
    {
        PageStateMap map = new(8);
        map.TryRequest(2);
        Assert.AreEqual(PageState.Requested, map.MarkReceived(2));
        Assert.AreEqual(PageState.Received, map.GetState(2));
        Assert.AreEqual(0UL, map.RequestedCount);
        Assert.AreEqual(1UL, map.ReceivedCount);
    }

    [TestMethod]
    public void ReceivedTwiceChangesNothing()
    {
        PageStateMap map = new(8);
        map.MarkReceived(1);
        Assert.AreEqual(PageState.Received, map.MarkReceived(1));
        Assert.AreEqual(PageState.Received, map.GetState(1));
        Assert.AreEqual(1UL, map.ReceivedCount);
    }

    [TestMethod]
    public void ReceivedToMissingByDiscardDuringSetup()
    {
        PageStateMap map = new(40);
        map.MarkReceived(39);
        Assert.AreEqual(PageState.Received, map.Discard(39));
        Assert.AreEqual(PageState.Missing, map.GetState(39));
        Assert.AreEqual(0UL, map.ReceivedCount);
        Assert.AreEqual(FaultOutcome.NeedsRequest, map.TryRequest(39));
    }

    [TestMethod]
    public void DiscardOfMissingPageLeavesItMissing()
    {
        PageStateMap map = new(8);
        Assert.AreEqual(PageState.Missing, map.Discard(4));
        Assert.AreEqual(PageState.Missing, map.GetState(4));
    }

    [TestMethod]
    public void DiscardOfRequestedPageIsRefusedNamingBothStates()
    {
        PageStateMap map = new(8);
        map.TryRequest(6);
        PageStateTransitionException error = Assert.ThrowsExactly<PageStateTransitionException>(() => map.Discard(6));
        Assert.AreEqual("Page 6 cannot go from Requested to Missing: a requested page has a fault waiting for it and must be received, not discarded.", error.Message);
        Assert.AreEqual(PageState.Requested, map.GetState(6));
        Assert.AreEqual((6UL, PageState.Requested, PageState.Missing), (error.Page, error.From, error.To));
    }

    [TestMethod]
    public void DiscardAfterRunningIsRefused()
    {
        PageStateMap map = new(8);
        map.MarkReceived(0);
        map.BeginRunning();
        Assert.IsTrue(map.IsRunning);
        PageStateTransitionException error = Assert.ThrowsExactly<PageStateTransitionException>(() => map.Discard(0));
        Assert.AreEqual("Page 0 cannot go from Received to Missing: discarding is only allowed during setup, before postcopy runs.", error.Message);
        Assert.AreEqual(PageState.Received, map.GetState(0));
        Assert.AreEqual(1UL, map.ReceivedCount);
    }

    [TestMethod]
    public void DiscardRangeDiscardsExactlyThoseReceivedPages()
    {
        PageStateMap map = new(100);
        for (ulong page = 0; page < 100; page++)
        {
            map.MarkReceived(page);
        }
        map.DiscardRange(30, 40);
        for (ulong page = 0; page < 100; page++)
        {
            Assert.AreEqual(page is >= 30 and < 70 ? PageState.Missing : PageState.Received, map.GetState(page), $"page {page}");
        }
        Assert.AreEqual(60UL, map.ReceivedCount);
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => map.DiscardRange(90, 11));
    }

    [TestMethod]
    public void PagesOutsideTheMapAreRefused()
    {
        PageStateMap map = new(33);
        ArgumentOutOfRangeException error = Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => map.TryRequest(33));
        StringAssert.StartsWith(error.Message, "Page 33 is outside the page map of 33 pages.");
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => map.MarkReceived(1000));
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => map.GetState(33));
    }

    [TestMethod]
    public void CompleteWhenEveryPageReceived()
    {
        PageStateMap map = new(3);
        map.MarkReceived(0);
        map.TryRequest(1);
        map.MarkReceived(1);
        Assert.IsFalse(map.IsComplete);
        map.MarkReceived(2);
        Assert.IsTrue(map.IsComplete);
        Assert.AreEqual(0UL, map.MissingCount);
    }

    [TestMethod]
    public void RacingRequestsAndReceptionsRequestEachPageAtMostOnce()
    {
        // 4 threads fault on every page while 2 threads receive every page, in different orders,
        // so that neighbouring pages in one 64-bit word are updated by different threads at once.
        const int pages = 20_000;
        PageStateMap map = new(pages);
        int[] requests = new int[pages];
        int[] receivedFromRequested = new int[pages];
        int[] receivedFromMissing = new int[pages];
        using Barrier start = new(6);
        List<Thread> threads = new();
        for (int t = 0; t < 4; t++)
        {
            int seed = t;
            threads.Add(new Thread(() =>
            {
                start.SignalAndWait();
                for (int i = 0; i < pages; i++)
                {
                    int page = (int)(((long)i * (2 * seed + 1) + seed * 977) % pages);
                    if (map.TryRequest((ulong)page) == FaultOutcome.NeedsRequest)
                    {
                        Interlocked.Increment(ref requests[page]);
                    }
                }
            }));
        }
        for (int t = 0; t < 2; t++)
        {
            bool forward = t == 0;
            threads.Add(new Thread(() =>
            {
                start.SignalAndWait();
                for (int i = 0; i < pages; i++)
                {
                    int page = forward ? i : pages - 1 - i;
                    PageState previous = map.MarkReceived((ulong)page);
                    if (previous == PageState.Requested)
                    {
                        Interlocked.Increment(ref receivedFromRequested[page]);
                    }
                    else if (previous == PageState.Missing)
                    {
                        Interlocked.Increment(ref receivedFromMissing[page]);
                    }
                }
            }));
        }
        threads.ForEach(thread => thread.Start());
        threads.ForEach(thread => thread.Join());

        for (int page = 0; page < pages; page++)
        {
            Assert.AreEqual(PageState.Received, map.GetState((ulong)page), $"page {page}");
            Assert.IsLessThanOrEqualTo(1, requests[page], $"page {page} requested {requests[page]} times");
            Assert.AreEqual(1, receivedFromRequested[page] + receivedFromMissing[page], $"page {page} received more than once from a non-received state");
            Assert.AreEqual(requests[page], receivedFromRequested[page], $"page {page}: a request and its reception must pair up");
        }
        Assert.IsTrue(map.IsComplete);
        Assert.AreEqual(0UL, map.RequestedCount);
    }
}
