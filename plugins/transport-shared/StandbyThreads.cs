using System.Collections.Concurrent;

namespace Modular.Transports.Shared;

/// <summary>
/// Dedicated threads started ahead (<see cref="Prepare"/>, from the transport's
/// <see cref="Modular.Abstractions.Plugins.IWarmUpPlugin.WarmUp"/>) and parked, so that a new
/// connection's receive thread starts without <see cref="Thread.Start()"/>, which waits until the new
/// thread runs: measured 1-14 ms per start on this busy 2-core host, two or three of them in a row
/// inside a migration's setup (the main connection and the preempt channel, on both sides). Each
/// parked thread runs one piece of work and ends; taking one starts a replacement in the
/// background. Without a parked thread <see cref="Run"/> starts one as usual.
/// </summary>
internal static class StandbyThreads
{
    /// <summary>Parked threads kept ready: a main connection's receive thread and a preempt channel's.</summary>
    private const int Ready = 2;

    private static readonly ConcurrentQueue<Parked> Threads = new();
    private static int _wanted;
    private static int _prepared;

    /// <summary>Keeps <see cref="Ready"/> threads parked from now on. Returns at once: they start on the thread pool (whose threads run at the usual priority, whatever the caller's). Any thread; idempotent.</summary>
    internal static void Prepare()
    {
        if (Interlocked.Exchange(ref _prepared, 1) == 0)
        {
            Replenish();
        }
    }

    /// <summary>Runs <paramref name="work"/> on a dedicated background thread named <paramref name="name"/>: a parked one if there is one, else a new one.</summary>
    internal static void Run(ThreadStart work, string name)
    {
        while (Threads.TryDequeue(out Parked? parked))
        {
            Interlocked.Decrement(ref _wanted);
            Replenish();
            if (parked.TryGive(work, name))
            {
                return;
            }
        }

        new Thread(work) { IsBackground = true, Name = name }.Start();
    }

    /// <summary>Number of threads parked now (for tests).</summary>
    internal static int ParkedCount => Threads.Count;

    private static void Replenish()
    {
        if (Volatile.Read(ref _prepared) == 0)
        {
            return;
        }

        while (true)
        {
            int wanted = Volatile.Read(ref _wanted);
            if (wanted >= Ready)
            {
                return;
            }

            if (Interlocked.CompareExchange(ref _wanted, wanted + 1, wanted) == wanted)
            {
                ThreadPool.UnsafeQueueUserWorkItem(static _ =>
                {
                    var parked = new Parked();
                    new Thread(parked.Wait) { IsBackground = true }.Start();
                    Threads.Enqueue(parked);
                }, null);
            }
        }
    }

    /// <summary>One parked thread: waits for its work, runs it, ends.</summary>
    private sealed class Parked
    {
        private readonly ManualResetEventSlim _go = new(initialState: false, spinCount: 0);
        private ThreadStart? _work;
        private string? _name;

        internal bool TryGive(ThreadStart work, string name)
        {
            if (Interlocked.CompareExchange(ref _work, work, null) is not null)
            {
                return false;
            }

            _name = name;
            _go.Set();
            return true;
        }

        internal void Wait()
        {
            _go.Wait();
            _go.Dispose();
            Thread.CurrentThread.Name = _name;
            _work!();
        }
    }
}
