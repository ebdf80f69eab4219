using System.Collections.Concurrent;
using Modular.Core.Migration.Engine;
using Modular.Tests.Support;

namespace Modular.Tests.Migration.Engine;

/// <summary>
/// The postcopy listen thread's priority: set once on a thread of its own, never on a thread-pool
/// thread, put back by Restore on every thread it changed, and never set again after that.
/// </summary>
[TestClass]
public sealed class ListenThreadPriorityTests
{
    [TestMethod]
    public void ADedicatedThreadGetsTheValueOnceAndRestoreTakesItBack()
    {
        using var parked = new ParkedThread();
        int before = ThreadNice.Of(parked.ThreadId);
        var priority = new ListenThreadPriority(-10);
        bool changed = false;
        parked.Run(() => changed = priority.OnCurrentThread());
        if (ThreadNice.Of(parked.ThreadId) == before)
        {
            Assert.Inconclusive("this process may not raise a thread's priority (no CAP_SYS_NICE): nothing to check");
        }

        Assert.IsTrue(changed);
        Assert.AreEqual(-10, ThreadNice.Of(parked.ThreadId));
        parked.Run(() => Assert.IsFalse(priority.OnCurrentThread()));
        Assert.AreEqual(1, priority.ChangedThreads, "a thread is changed once, however often the listen loop passes");

        priority.Restore();
        Assert.AreEqual(before, ThreadNice.Of(parked.ThreadId), "restored from another thread while the thread still runs");
        Assert.AreEqual(0, priority.ChangedThreads);

        priority.Restore();
        using var late = new ParkedThread();
        late.Run(() => Assert.IsFalse(priority.OnCurrentThread()));
        Assert.AreEqual(before, ThreadNice.Of(late.ThreadId), "after Restore nothing is changed any more");
        Assert.AreEqual(0, priority.ChangedThreads);
    }

    [TestMethod]
    public async Task AThreadPoolThreadIsLeftAlone()
    {
        var priority = new ListenThreadPriority(5);
        (int threadId, int before, bool isPool) = await Task.Run(() =>
        {
            int before = ThreadNice.OfCurrentThread();
            Assert.IsFalse(priority.OnCurrentThread());
            return (ThreadNice.CurrentThreadId, before, Thread.CurrentThread.IsThreadPoolThread);
        });

        Assert.IsTrue(isPool);
        Assert.AreEqual(before, ThreadNice.Of(threadId), "a pool thread would keep the value for unrelated work");
        Assert.AreEqual(0, priority.ChangedThreads);
    }

    [TestMethod]
    public void ZeroChangesNothingAndValuesOutsideNicesRangeAreRefused()
    {
        using var parked = new ParkedThread();
        int before = ThreadNice.Of(parked.ThreadId);
        var priority = new ListenThreadPriority(0);
        parked.Run(() => priority.OnCurrentThread());
        Assert.AreEqual(before, ThreadNice.Of(parked.ThreadId));
        Assert.AreEqual(0, priority.ChangedThreads);

        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => new ListenThreadPriority(-21));
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => new ListenThreadPriority(20));
    }

    [TestMethod]
    public void NothingChangesUntilTheGateOpens_AndTheOpenGateIsNotAskedAgain()
    {
        using var parked = new ParkedThread();
        int before = ThreadNice.Of(parked.ThreadId);
        bool guestRuns = false;
        int asked = 0;
        var priority = new ListenThreadPriority(7, () =>
        {
            asked++;
            return guestRuns;
        });

        parked.Run(() => Assert.IsFalse(priority.OnCurrentThread()));
        parked.Run(() => Assert.IsFalse(priority.OnCurrentThread()));
        Assert.AreEqual(before, ThreadNice.Of(parked.ThreadId), "the guest does not run yet: the thread keeps its priority");
        Assert.AreEqual(2, asked, "a closed gate is asked on every pass, so the thread is raised on the pass after it opens");
        Assert.AreEqual(0, priority.ChangedThreads);

        guestRuns = true;
        parked.Run(() => Assert.IsTrue(priority.OnCurrentThread()));
        Assert.AreEqual(7, ThreadNice.Of(parked.ThreadId));
        Assert.AreEqual(3, asked);

        guestRuns = false; // a pause later does not matter: the thread stays raised until Restore
        using var next = new ParkedThread();
        next.Run(() => Assert.IsTrue(priority.OnCurrentThread()));
        Assert.AreEqual(7, ThreadNice.Of(next.ThreadId), "a recovery's new listen thread is raised at once");
        Assert.AreEqual(3, asked, "an opened gate is not asked again");
        Assert.AreEqual(2, priority.ChangedThreads);

        priority.Restore();
        Assert.AreEqual(before, ThreadNice.Of(parked.ThreadId));
    }

    [TestMethod]
    public void LoweringNeedsNoPrivilege()
    {
        using var parked = new ParkedThread();
        var priority = new ListenThreadPriority(19);
        parked.Run(() => priority.OnCurrentThread());
        Assert.AreEqual(19, ThreadNice.Of(parked.ThreadId), "lowering one's own thread needs no privilege");
        Assert.AreEqual(1, priority.ChangedThreads);
    }

    /// <summary>A dedicated (non-pool) thread that runs actions on request and stays alive until disposed.</summary>
    private sealed class ParkedThread : IDisposable
    {
        private readonly BlockingCollection<Action> _work = [];
        private readonly Thread _thread;
        private readonly TaskCompletionSource<int> _id = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public ParkedThread()
        {
            _thread = new Thread(Loop) { IsBackground = true, Name = "test listen thread" };
            _thread.Start();
            ThreadId = _id.Task.GetAwaiter().GetResult();
        }

        public int ThreadId { get; }

        /// <summary>Runs <paramref name="action"/> on the thread and waits for it; its exception is rethrown here.</summary>
        public void Run(Action action)
        {
            var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            _work.Add(() =>
            {
                try
                {
                    action();
                    done.SetResult();
                }
                catch (Exception ex)
                {
                    done.SetException(ex);
                }
            });
            done.Task.GetAwaiter().GetResult();
        }

        public void Dispose()
        {
            _work.CompleteAdding();
            _thread.Join();
            _work.Dispose();
        }

        private void Loop()
        {
            _id.SetResult(ThreadNice.CurrentThreadId);
            foreach (Action action in _work.GetConsumingEnumerable())
            {
                action();
            }
        }
    }
}
