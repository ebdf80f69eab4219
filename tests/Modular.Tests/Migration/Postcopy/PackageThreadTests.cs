using Modular.Core.Migration.Postcopy;

namespace Modular.Tests.Migration.Postcopy;

/// <summary>
/// The postcopy package thread: parked from ADVISE, it runs the package load once, on itself (not
/// the caller's thread, not the pool), completes with the load or its exception, and ends when
/// disposed unused; work given after that, or a second time, still runs (on the pool).
/// </summary>
[TestClass]
public sealed class PackageThreadTests
{
    [TestMethod]
    public async Task TheWorkRunsOnThePackageThread_AndItsTaskCompletesWithIt()
    {
        using var thread = new PackageThread("postcopy package");
        string? ranOn = null;
        bool pool = true;
        await thread.RunAsync(async () =>
        {
            ranOn = Thread.CurrentThread.Name;
            pool = Thread.CurrentThread.IsThreadPoolThread;
            await Task.CompletedTask;
        }).WaitAsync(TimeSpan.FromSeconds(10));

        Assert.AreEqual("postcopy package", ranOn);
        Assert.IsFalse(pool, "the load does not wait for a pool thread");
    }

    [TestMethod]
    public async Task AFailingLoad_FailsTheTaskWithItsOwnException()
    {
        using var thread = new PackageThread("postcopy package");
        var thrown = await Assert.ThrowsExactlyAsync<InvalidDataException>(() =>
            thread.RunAsync(() => throw new InvalidDataException("a corrupt device section")).WaitAsync(TimeSpan.FromSeconds(10)));
        Assert.AreEqual("a corrupt device section", thrown.Message);
    }

    [TestMethod]
    public async Task AThreadDisposedUnused_Ends_AndLaterWorkStillRunsOnThePool()
    {
        var thread = new PackageThread("pkg-unused-test");
        thread.Dispose();
        thread.Dispose(); // harmless twice
        Assert.IsTrue(SpinWait.SpinUntil(() => !ThreadNamed("pkg-unused-test"), TimeSpan.FromSeconds(10)), "the parked thread ended");

        bool ran = false;
        await thread.RunAsync(() => { ran = Thread.CurrentThread.IsThreadPoolThread; return Task.CompletedTask; }).WaitAsync(TimeSpan.FromSeconds(10));
        Assert.IsTrue(ran, "work given after Dispose runs on the pool");
    }

    [TestMethod]
    public async Task ASecondLoad_RunsOnThePool()
    {
        using var thread = new PackageThread("postcopy package");
        await thread.RunAsync(() => Task.CompletedTask).WaitAsync(TimeSpan.FromSeconds(10));
        string? second = "not run";
        await thread.RunAsync(() => { second = Thread.CurrentThread.Name; return Task.CompletedTask; }).WaitAsync(TimeSpan.FromSeconds(10));
        Assert.AreNotEqual("postcopy package", second);
        Assert.AreNotEqual("not run", second);
    }

    private static bool ThreadNamed(string name) => Machine.MachineTesting.ThreadNames().Contains(name);
}
