extern alias tcp;

using StandbyThreads = tcp::Modular.Transports.Shared.StandbyThreads;

namespace Modular.Transports.Tests;

/// <summary>
/// The parked threads behind the tcp and unix transports' warm-up: work runs on a dedicated
/// background thread under the name asked for, with or without a parked thread; after a warm-up two
/// threads wait, one is taken per connection, and a replacement is parked again.
/// </summary>
[TestClass]
public sealed class StandbyThreadsTests
{
    private static readonly TimeSpan Soon = TimeSpan.FromSeconds(10);

    [TestMethod]
    public void WorkRunsOnADedicatedBackgroundThreadWithTheNameAskedFor()
    {
        (string? Name, bool Background, bool Pool, int Id) seen = default;
        using var done = new ManualResetEventSlim();
        StandbyThreads.Run(() =>
        {
            Thread self = Thread.CurrentThread;
            seen = (self.Name, self.IsBackground, self.IsThreadPoolThread, self.ManagedThreadId);
            done.Set();
        }, "test receive");

        Assert.IsTrue(done.Wait(Soon), "the work must run");
        Assert.AreEqual("test receive", seen.Name);
        Assert.IsTrue(seen.Background, "a receive thread must not keep the process alive");
        Assert.IsFalse(seen.Pool, "a dedicated thread, not the thread pool's");
        Assert.AreNotEqual(Environment.CurrentManagedThreadId, seen.Id);
    }

    [TestMethod]
    public void AfterPrepareTwoThreadsWait_AndEachOneTakenIsReplaced()
    {
        StandbyThreads.Prepare();
        StandbyThreads.Prepare(); // idempotent
        WaitForParked(2);

        var ran = new List<string?>();
        var release = new ManualResetEventSlim();
        using var started = new CountdownEvent(3);
        for (int i = 0; i < 3; i++)
        {
            StandbyThreads.Run(() =>
            {
                lock (ran)
                {
                    ran.Add(Thread.CurrentThread.Name);
                }

                started.Signal();
                release.Wait(); // a receive loop stays on its thread
            }, $"work {i}");
        }

        Assert.IsTrue(started.Wait(Soon), "every piece of work runs, with or without a parked thread for it");
        CollectionAssert.AreEquivalent(new[] { "work 0", "work 1", "work 2" }, ran);
        WaitForParked(2); // replacements, started in the background
        release.Set();
    }

    private static void WaitForParked(int count)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (StandbyThreads.ParkedCount < count)
        {
            Assert.IsTrue(clock.Elapsed < Soon, $"{StandbyThreads.ParkedCount} threads parked after {Soon.TotalSeconds} s; expected {count}");
            Thread.Sleep(10);
        }

        Assert.AreEqual(count, StandbyThreads.ParkedCount, "no more than the two it keeps");
    }
}
