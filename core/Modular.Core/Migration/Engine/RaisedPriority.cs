using System.Runtime.InteropServices;
using Modular.Core.Interop;

namespace Modular.Core.Migration.Engine;

/// <summary>
/// Raises the calling thread's scheduling priority to nice -20 (still SCHED_OTHER) and restores it
/// on dispose. For the few threads a migration's latency rides on: the postcopy switch (from stopping
/// the vCPUs to handing the package to the transport; measured on this 2-core host, the switch thread,
/// runnable, waited 2.5-3.9 ms for a core, half the downtime) and the destination's fault thread
/// (each missing page's request starts there). They block most of the time, so raising them takes
/// little from anything else. Needs CAP_SYS_NICE; without it nothing changes. The thread id is
/// remembered, so restoring is right even if an await resumed elsewhere.
/// </summary>
internal readonly struct RaisedPriority : IDisposable
{
    /// <summary>The nice value a raised thread gets.</summary>
    internal const int Nice = -20;

    private readonly int _threadId;
    private readonly int _previous;

    private RaisedPriority(int threadId, int previous)
    {
        _threadId = threadId;
        _previous = previous;
    }

    /// <summary>True when this thread was raised (false: not permitted, or already as high).</summary>
    internal bool IsRaised => _threadId != 0;

    /// <summary>Raises the current thread; returns what restores it (a no-op when raising was refused).</summary>
    internal static RaisedPriority RaiseCurrentThread()
    {
        int threadId = Libc.Gettid();
        Marshal.SetLastPInvokeError(0);
        int previous = Libc.Getpriority(Libc.PRIO_PROCESS, (uint)threadId);
        if ((previous == -1 && Marshal.GetLastPInvokeError() != 0) || previous <= Nice)
        {
            return default;
        }

        return Libc.Setpriority(Libc.PRIO_PROCESS, (uint)threadId, Nice) == 0 ? new RaisedPriority(threadId, previous) : default;
    }

    /// <summary>Restores the raised thread's priority. Any thread.</summary>
    public void Dispose()
    {
        if (_threadId != 0)
        {
            _ = Libc.Setpriority(Libc.PRIO_PROCESS, (uint)_threadId, _previous);
        }
    }
}
