using System.Runtime.InteropServices;
using Modular.Core.Migration.Engine;

namespace Modular.Tests.Migration.Engine;

/// <summary>
/// The pieces that keep compiling and scheduling out of a migration's way: the made-up stream the
/// warm-up writes must read back through the real readers and RAM loader (a format change that
/// breaks one side fails here, not silently in the warm-up), and a thread's nice value is changed
/// and put back.
/// </summary>
[TestClass]
public sealed partial class WarmUpTests
{
    [TestMethod]
    public void TheWarmUpStreamReadsBackThroughTheRealReaders()
    {
        // Throws if a writer and its reader disagree (for instance an unknown section or a short read).
        StreamWarmUp.Exercise();
        StreamWarmUp.Exercise();
    }

    [TestMethod]
    public async Task AnAsyncMethodsMachineryIsCompiledAheadOfItsFirstRun()
    {
        // Two async methods alike, neither run before: the runtime's code behind them (the builder's
        // Start and AwaitUnsafeOnCompleted over each state machine, its box) is compiled on the first
        // run, on the thread that runs it, up to the first await that waits.
        Type warmed = StateMachineOf(nameof(WaitOnceWarmedAsync));
        Type cold = StateMachineOf(nameof(WaitOnceColdAsync));
        AsyncWarmUp.Prepare(warmed);

        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        long before = System.Runtime.JitInfo.GetCompiledMethodCount(currentThread: true);
        Task<int> first = WaitOnceWarmedAsync(release.Task);
        long warmedCompiles = System.Runtime.JitInfo.GetCompiledMethodCount(currentThread: true) - before;

        before = System.Runtime.JitInfo.GetCompiledMethodCount(currentThread: true);
        Task<int> second = WaitOnceColdAsync(release.Task);
        long coldCompiles = System.Runtime.JitInfo.GetCompiledMethodCount(currentThread: true) - before;

        release.SetResult();
        Assert.AreEqual(1, await first);
        Assert.AreEqual(2, await second);
        Assert.IsGreaterThanOrEqualTo(3, coldCompiles, "the cold method's first run compiles its machinery");
        Assert.IsLessThan(coldCompiles, warmedCompiles, $"prepared ahead: {warmedCompiles} methods compiled at the first run, against {coldCompiles} for the cold one");
    }

    [TestMethod]
    public void PreparingATypeThatIsNoStateMachineDoesNothing()
    {
        long before = System.Runtime.JitInfo.GetCompiledMethodCount(currentThread: true);
        AsyncWarmUp.Prepare(typeof(WarmUpTests));
        AsyncWarmUp.Prepare(typeof(List<>).GetNestedType("Enumerator")!);
        Assert.AreEqual(before, System.Runtime.JitInfo.GetCompiledMethodCount(currentThread: true));
    }

    private static Type StateMachineOf(string method) =>
        typeof(WarmUpTests).GetMethod(method, System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Static)!
            .GetCustomAttributes(typeof(System.Runtime.CompilerServices.AsyncStateMachineAttribute), inherit: false)
            .Cast<System.Runtime.CompilerServices.AsyncStateMachineAttribute>().Single().StateMachineType;

    private static async Task<int> WaitOnceWarmedAsync(Task release)
    {
        await release.ConfigureAwait(false);
        return 1;
    }

    private static async Task<int> WaitOnceColdAsync(Task release)
    {
        await release.ConfigureAwait(false);
        return 2;
    }

    [TestMethod]
    public void NiceScopeChangesTheCurrentThreadAndRestoresIt()
    {
        Exception? failure = null;
        var thread = new Thread(() =>
        {
            try
            {
                Check();
            }
            catch (Exception ex)
            {
                failure = ex;
            }
        });
        thread.Start();
        thread.Join();
        if (failure is not null)
        {
            throw failure;
        }

        static void Check()
        {
            int before = Nice();
            NiceScope raised = NiceScope.RaiseCurrentThread();
            bool mayRaise = raised.IsChanged;
            Assert.AreEqual(mayRaise ? NiceScope.Raised : before, Nice(), "raised, or (without CAP_SYS_NICE) unchanged");
            raised.Dispose();
            Assert.AreEqual(before, Nice(), "dispose restores the previous nice value");

            NiceScope lowered = NiceScope.LowerCurrentThread();
            Assert.IsTrue(lowered.IsChanged, "lowering one's own thread needs no privilege");
            Assert.AreEqual(NiceScope.Lowered, Nice());
            lowered.Dispose();
            // Going back up needs CAP_SYS_NICE (or RLIMIT_NICE); without it the thread stays low,
            // which is why the warm-up lowers a thread of its own rather than a pool thread.
            Assert.AreEqual(mayRaise ? before : NiceScope.Lowered, Nice(), "dispose restores the previous nice value where permitted");
        }
    }

    private static int Nice() => Interop.Getpriority(0, (uint)Interop.Gettid());

    private static partial class Interop
    {
        [LibraryImport("libc", EntryPoint = "getpriority")]
        internal static partial int Getpriority(int which, uint who);

        [LibraryImport("libc", EntryPoint = "gettid")]
        internal static partial int Gettid();
    }
}
