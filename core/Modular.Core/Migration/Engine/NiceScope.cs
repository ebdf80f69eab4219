using System.Runtime.InteropServices;
using Modular.Core.Interop;

namespace Modular.Core.Migration.Engine;

/// <summary>
/// Sets the calling thread's nice value (still SCHED_OTHER) and restores it on dispose.
/// <list type="bullet">
/// <item>nice -20 (<see cref="Raised"/>), the fallback for the postcopy switch thread where it may not
/// run real-time (<see cref="SwitchPriority"/>).</item>
/// <item><see cref="LowerCurrentThread"/> (nice 19), for work that may take the leftovers: compiling
/// the migration code ahead on a source whose guest is running.</item>
/// <item><see cref="SetCurrentThread"/>, any value: the postcopy listen thread
/// (<see cref="ListenThreadPriority"/>).</item>
/// </list>
/// The thread id is remembered, so restoring is right from any thread, even if an await resumed
/// elsewhere.
/// </summary>
internal readonly struct NiceScope : IDisposable
{
    /// <summary>The nice value of a raised thread.</summary>
    internal const int Raised = -20;

    /// <summary>The nice value of a lowered thread.</summary>
    internal const int Lowered = 19;

    private readonly int _threadId;
    private readonly int _previous;

    private NiceScope(int threadId, int previous)
    {
        _threadId = threadId;
        _previous = previous;
    }

    /// <summary>True when the thread's nice value was changed (false: not permitted, or already there).</summary>
    internal bool IsChanged => _threadId != 0;

    /// <summary>Lowers the current thread to nice 19; returns what restores it.</summary>
    internal static NiceScope LowerCurrentThread() => SetCurrentThread(Lowered);

    /// <summary>Restores the thread's previous nice value. Any thread; harmless twice.</summary>
    public void Dispose()
    {
        if (_threadId != 0)
        {
            _ = Libc.Setpriority(Libc.PRIO_PROCESS, (uint)_threadId, _previous);
        }
    }

    /// <summary>Sets the current thread's nice value (-20 to 19); returns what restores it (a no-op when refused or unchanged).</summary>
    internal static NiceScope SetCurrentThread(int nice)
    {
        int threadId = Libc.Gettid();
        Marshal.SetLastPInvokeError(0);
        int previous = Libc.Getpriority(Libc.PRIO_PROCESS, (uint)threadId);
        if ((previous == -1 && Marshal.GetLastPInvokeError() != 0) || previous == nice)
        {
            return default;
        }

        return Libc.Setpriority(Libc.PRIO_PROCESS, (uint)threadId, nice) == 0 ? new NiceScope(threadId, previous) : default;
    }
}
