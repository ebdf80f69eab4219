namespace Modular.Core.Migration.Engine;

/// <summary>
/// Gives the postcopy destination's listen thread (the thread that reads the stream after LISTEN
/// and places the background pages) the nice value <c>migration.postcopy-listen-nice</c> while
/// postcopy runs, and restores it at the end or on failure.
/// </summary>
/// <remarks>
/// <para>Why: once RUN has started the guest, the guest's vCPUs and the listen thread compete for the
/// host's cores, and postcopy ends only when the listen thread has placed every page. Until then the
/// guest depends on the source (losing the connection loses the guest) and faults on missing pages.
/// Measured on this 2-core host (tcp, dirtying 1 GiB A/B guest, seven alternating `modular bench`
/// runs each): total 1.01-1.38 s (median 1.29 s) at nice 0, 0.92-1.21 s (median 1.09 s) at -10; the
/// destination's vCPU got about 0.55-0.75 s of CPU in that window instead of 1.0-1.2 s. The preempt
/// channel and the fault thread stay above it (nice -20), so page requests do not wait behind it.
/// QEMU leaves its listen thread at the process's priority: set 0 for that.</para>
/// <para>Not before the guest runs again: <see cref="OnCurrentThread"/> changes nothing until the
/// function given says so (the destination: POSTCOPY_RUN came and a vCPU thread has left its park).
/// Between LISTEN and RUN the raised thread took the cores from the package load, and after RUN from
/// the vCPU thread waking to run: session 21, 16 alternating bench runs of the postcopy row each
/// (tcp and unix, 80-85 runs), the vCPUs ran again over 2 ms after the package was read in 22 of 80
/// runs against 35 of 85 raised at LISTEN, and no pool's request p99 was over 1 ms against 5 of 16.</para>
/// <para>Only a thread of its own is changed: the listen loop's continuations run on the
/// transport's receive thread (tcp, unix), never a thread-pool thread, which would keep the value
/// for unrelated work. A transport that completes reads on the pool is left as it is.</para>
/// <para>Threads: <see cref="OnCurrentThread"/> from the listen loop; <see cref="Restore"/> from
/// any thread, harmless twice; after it nothing is raised any more.</para>
/// </remarks>
internal sealed class ListenThreadPriority
{
    private readonly int _nice;
    private readonly Func<bool>? _guestRuns;
    private readonly object _gate = new();
    private readonly List<NiceScope> _changed = [];
    private readonly HashSet<int> _seen = [];
    private int _lastThread = -1;
    private bool _restored;
    private volatile bool _opened;

    /// <param name="nice">The listen thread's nice value while postcopy runs; 0 leaves it alone.</param>
    /// <param name="guestRuns">
    /// Asked on each pass until it first says true: nothing is changed before (the guest does not run
    /// yet). Null: no wait. Called on the listen thread; it must be cheap.
    /// </param>
    internal ListenThreadPriority(int nice, Func<bool>? guestRuns = null)
    {
        _guestRuns = guestRuns;
        ArgumentOutOfRangeException.ThrowIfLessThan(nice, -20);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(nice, 19);
        _nice = nice;
    }

    /// <summary>Threads whose nice value is changed now (for the log and tests).</summary>
    internal int ChangedThreads
    {
        get
        {
            lock (_gate)
            {
                return _changed.Count(scope => scope.IsChanged);
            }
        }
    }

    /// <summary>The nice value given.</summary>
    internal int Nice => _nice;

    /// <summary>Sets the calling thread's nice value, once per thread, unless it is a thread-pool thread; true when it was changed now.</summary>
    /// <remarks>Called after every batch of pages: the same thread as last time returns at once, without the lock.</remarks>
    internal bool OnCurrentThread()
    {
        int id = Environment.CurrentManagedThreadId;
        if (_nice == 0 || id == Volatile.Read(ref _lastThread) || Thread.CurrentThread.IsThreadPoolThread)
        {
            return false;
        }

        if (!_opened)
        {
            if (_guestRuns is not null && !_guestRuns())
            {
                return false;
            }

            _opened = true;
        }

        lock (_gate)
        {
            Volatile.Write(ref _lastThread, id);
            if (_restored || !_seen.Add(id))
            {
                return false;
            }

            NiceScope scope = NiceScope.SetCurrentThread(_nice);
            _changed.Add(scope);
            return scope.IsChanged;
        }
    }

    /// <summary>Restores every thread changed so far.</summary>
    internal void Restore()
    {
        lock (_gate)
        {
            _restored = true;
            foreach (NiceScope scope in _changed)
            {
                scope.Dispose();
            }

            _changed.Clear();
        }
    }
}
