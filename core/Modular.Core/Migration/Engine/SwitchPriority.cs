using System.Runtime.InteropServices;
using Modular.Core.Interop;

namespace Modular.Core.Migration.Engine;

/// <summary>
/// Raises the calling thread's scheduling priority (nice -20) for the postcopy switch, the few
/// milliseconds from stopping the vCPUs to handing the package to the transport, and restores it
/// on dispose. Measured on this 2-core host: the switch thread, runnable, waited 2.5-3.9 ms for a
/// core behind the other process's threads (half the downtime); the JIT and socket threads of both
/// processes are runnable then. Needs CAP_SYS_NICE to raise; without it nothing changes (the
/// switch just runs at the usual priority). The thread id is remembered, so restoring is right even
/// if an await resumed elsewhere.
/// </summary>
internal readonly struct SwitchPriority : IDisposable
{
    private const int Raised = -20;
    private readonly int _threadId;
    private readonly int _previous;

    private SwitchPriority(int threadId, int previous)
    {
        _threadId = threadId;
        _previous = previous;
    }

    /// <summary>Raises the current thread; returns what restores it (a no-op when raising was refused).</summary>
    internal static SwitchPriority Raise()
    {
        int threadId = Libc.Gettid();
        Marshal.SetLastPInvokeError(0);
        int previous = Libc.Getpriority(Libc.PRIO_PROCESS, (uint)threadId);
        if ((previous == -1 && Marshal.GetLastPInvokeError() != 0) || previous <= Raised)
        {
            return default;
        }

        return Libc.Setpriority(Libc.PRIO_PROCESS, (uint)threadId, Raised) == 0 ? new SwitchPriority(threadId, previous) : default;
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
