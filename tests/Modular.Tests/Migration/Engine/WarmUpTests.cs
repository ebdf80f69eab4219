using Modular.Abstractions.Threading;
using Modular.Core.Migration.Engine;
using Modular.Tests.Support;

namespace Modular.Tests.Migration.Engine;

/// <summary>
/// The pieces that keep compiling and scheduling out of a migration's way: the made-up stream the
/// warm-up writes must read back through the real readers and RAM loader (a format change that
/// breaks one side fails here, not silently in the warm-up), and a thread's nice value is changed
/// and put back.
/// </summary>
[TestClass]
public sealed class WarmUpTests
{
    [TestMethod]
    public void TheWarmUpStreamReadsBackThroughTheRealReaders()
    {
        // Throws if a writer and its reader disagree (for instance an unknown section or a short read).
        StreamWarmUp.Exercise();
        StreamWarmUp.Exercise();
    }

    [TestMethod]
    public void ThePageRequestRehearsalRequestsAndReceivesItsPages()
    {
        // Two faults on scratch RAM (anonymous, then shared memory) become two requests each, and the
        // pages that answer them are placed and marked received: the rehearsal runs the real path.
        (int requests, ulong received) = StreamWarmUp.ExerciseRequestPath();
        Assert.AreEqual(4, requests);
        Assert.AreEqual(4UL, received);
    }

    [TestMethod]
    public void TheRequestQueueWarmUpCompilesItsGrowth_SoAPileOfRequestsCompilesNothing()
    {
        // The source queues every page request for its migration task; while that task waits on a
        // full connection they pile up, and the 33rd outgrows the queue's first segment. After the
        // warm-up, three segments' worth going in and out compiles nothing more on this thread (with
        // one request through the warm-up, EnqueueSlow, the new segments and TryDequeueSlow were
        // compiled here, as they were on the return-path reader inside a request).
        OutgoingMigration.WarmUpRequestQueue();
        var queue = new System.Collections.Concurrent.ConcurrentQueue<OutgoingMigration.PageRequest>();
        long before = System.Runtime.JitInfo.GetCompiledMethodCount(currentThread: true);
        for (int i = 0; i < OutgoingMigration.RequestQueueWarmUpCount; i++)
        {
            queue.Enqueue(new OutgoingMigration.PageRequest(0, i, 1, Sent: true));
        }

        var drained = new OutgoingMigration.PageRequest[OutgoingMigration.RequestQueueWarmUpCount + 1];
        int dequeued = 0;
        while (dequeued < drained.Length && queue.TryDequeue(out drained[dequeued]))
        {
            dequeued++;
        }

        long compiled = System.Runtime.JitInfo.GetCompiledMethodCount(currentThread: true) - before;
        Assert.AreEqual(OutgoingMigration.RequestQueueWarmUpCount, dequeued);
        for (int i = 0; i < dequeued; i++)
        {
            Assert.AreEqual(i, drained[i].Page, "the queue keeps the requests' order");
        }

        Assert.AreEqual(0, compiled, $"{compiled} methods compiled while requests piled up and drained after the warm-up");
    }

    [TestMethod]
    public async Task AnAsyncMethodsMachineryIsCompiledAheadOfItsFirstRun()
    {
        // Two async methods alike, neither run before, each with a result type of its own (so that no
        // other test has compiled the runtime's code for it): the builder's Start and
        // AwaitUnsafeOnCompleted over each state machine, its box, the builder's and Task's members
        // for that result type. On the first run that is compiled on the thread that runs the method,
        // up to the first await that waits.
        Type warmed = StateMachineOf(nameof(WaitOnceWarmedAsync));
        Type cold = StateMachineOf(nameof(WaitOnceColdAsync));
        AsyncWarmUp.Prepare(warmed);

        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        long before = System.Runtime.JitInfo.GetCompiledMethodCount(currentThread: true);
        Task<WarmedResult> first = WaitOnceWarmedAsync(release.Task);
        long warmedCompiles = System.Runtime.JitInfo.GetCompiledMethodCount(currentThread: true) - before;

        before = System.Runtime.JitInfo.GetCompiledMethodCount(currentThread: true);
        Task<ColdResult> second = WaitOnceColdAsync(release.Task);
        long coldCompiles = System.Runtime.JitInfo.GetCompiledMethodCount(currentThread: true) - before;

        release.SetResult();
        Assert.AreEqual(1, (await first).Value);
        Assert.AreEqual(2, (await second).Value);
        Assert.IsGreaterThanOrEqualTo(4, coldCompiles, "the cold method's first run compiles its machinery");
        Assert.IsLessThanOrEqualTo(coldCompiles / 2, warmedCompiles, $"prepared ahead: {warmedCompiles} methods compiled at the first run, against {coldCompiles} for the cold one");
    }

    [TestMethod]
    public void AMethodTheRuntimeHasNotGivenAnEntryPointYetIsCompiledWhenPrepared()
    {
        // The parameterless MoveNext of an async method's box, which runs each time the method
        // resumes inline (a postcopy channel's reader on its receive thread): the runtime gives it
        // an entry point lazily, and RuntimeHelpers.PrepareMethod alone then compiled nothing.
        Type box = typeof(System.Runtime.CompilerServices.AsyncTaskMethodBuilder<>)
            .GetNestedType("AsyncStateMachineBox`1", System.Reflection.BindingFlags.NonPublic)!
            .MakeGenericType(typeof(EntryPointResult), StateMachineOf(nameof(ResumeOnceAsync)));
        System.Reflection.MethodInfo moveNext = box.GetMethod("MoveNext", System.Reflection.BindingFlags.Public | System.Reflection.BindingFlags.Instance, Type.EmptyTypes)!;

        long before = System.Runtime.JitInfo.GetCompiledMethodCount(currentThread: true);
        AsyncWarmUp.TryPrepare(moveNext);
        long first = System.Runtime.JitInfo.GetCompiledMethodCount(currentThread: true) - before;
        before = System.Runtime.JitInfo.GetCompiledMethodCount(currentThread: true);
        AsyncWarmUp.TryPrepare(moveNext);
        long again = System.Runtime.JitInfo.GetCompiledMethodCount(currentThread: true) - before;

        Assert.AreEqual(1, first, "the box's MoveNext() is compiled by the warm-up");
        Assert.AreEqual(0, again, "and only once");
    }

    [TestMethod]
    public void AnAsyncMethodPreparedAheadResumesInlineWithLessCompiling()
    {
        // Resumed inside SetResult on this thread, as a pipe's inline reader is inside a flush; a
        // twin method, never prepared, shows what the resume compiles otherwise.
        AsyncWarmUp.Prepare(StateMachineOf(nameof(ResumeOnceAsync)));
        long warmed = CompilesOnResume(ResumeOnceAsync, 3);
        long cold = CompilesOnResume(ResumeOnceColdAsync, 4);
        Assert.IsLessThan(cold, warmed, $"prepared ahead: {warmed} methods compiled at the first resume, against {cold} for the cold twin");

        static long CompilesOnResume<T>(Func<Task, Task<T>> method, int expected)
            where T : struct
        {
            var release = new TaskCompletionSource();
            Task<T> running = method(release.Task);
            Assert.IsFalse(running.IsCompleted);
            long before = System.Runtime.JitInfo.GetCompiledMethodCount(currentThread: true);
            release.SetResult();
            long compiles = System.Runtime.JitInfo.GetCompiledMethodCount(currentThread: true) - before;
            Assert.IsTrue(running.IsCompletedSuccessfully);
            Assert.AreEqual(expected, running.Result is EntryPointResult e ? e.Value : ((ColdEntryPointResult)(object)running.Result).Value);
            return compiles;
        }
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

    private static async Task<WarmedResult> WaitOnceWarmedAsync(Task release)
    {
        await release.ConfigureAwait(false);
        return new WarmedResult(1);
    }

    private static async Task<ColdResult> WaitOnceColdAsync(Task release)
    {
        await release.ConfigureAwait(false);
        return new ColdResult(2);
    }

    private static async Task<EntryPointResult> ResumeOnceAsync(Task release)
    {
        await release.ConfigureAwait(false);
        return new EntryPointResult(3);
    }

    private static async Task<ColdEntryPointResult> ResumeOnceColdAsync(Task release)
    {
        await release.ConfigureAwait(false);
        return new ColdEntryPointResult(4);
    }

    private readonly record struct EntryPointResult(int Value);

    private readonly record struct ColdEntryPointResult(int Value);

    private readonly record struct WarmedResult(int Value);

    private readonly record struct ColdResult(int Value);

    [TestMethod]
    public void NiceScopeChangesTheCurrentThreadAndRestoresIt()
    {
        OnThreadOfItsOwn(Check);

        static void Check()
        {
            int before = Nice();
            NiceScope raised = NiceScope.SetCurrentThread(NiceScope.Raised);
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

    [TestMethod]
    public void SwitchPriority_RaisesRealTimeOrNiceAsThePolicySays_AndDisposeGivesTheThreadItsSchedulingBack()
    {
        OnThreadOfItsOwn(Check);

        static void Check()
        {
            int before = Nice();
            SwitchPriority realTime = SwitchPriority.RaiseCurrentThread(LatencyThreadPolicy.RealTime);
            if (realTime.Kind == SwitchPriorityKind.Unchanged)
            {
                Assert.Inconclusive("this host permits neither SCHED_FIFO nor nice -20 (CAP_SYS_NICE)");
            }

            Assert.AreEqual(realTime.Kind == SwitchPriorityKind.RealTime ? 1 : 0, SchedGetscheduler(0) & 0xff, "SCHED_FIFO while raised, where permitted");
            realTime.Dispose();
            Assert.AreEqual(0, SchedGetscheduler(0), "SCHED_OTHER again");
            Assert.AreEqual(before, Nice(), "at the nice value it had");

            SwitchPriority nice = SwitchPriority.RaiseCurrentThread(LatencyThreadPolicy.Nice);
            Assert.AreEqual(SwitchPriorityKind.Nice, nice.Kind);
            Assert.AreEqual(0, SchedGetscheduler(0), "the nice policy stays SCHED_OTHER");
            Assert.AreEqual(NiceScope.Raised, Nice());
            nice.Dispose();
            nice.Dispose(); // harmless twice
            Assert.AreEqual(before, Nice());
        }
    }

    /// <summary>Runs <paramref name="check"/> on a new thread (its scheduling changes die with it) and rethrows its failure.</summary>
    private static void OnThreadOfItsOwn(Action check)
    {
        Exception? failure = null;
        var thread = new Thread(() =>
        {
            try
            {
                check();
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
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(failure);
        }
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "sched_getscheduler")]
    private static extern int SchedGetscheduler(int threadId);

    private static int Nice() => ThreadNice.OfCurrentThread();
}
