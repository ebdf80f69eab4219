using System.Runtime.InteropServices;

namespace Modular.Transports.Shared;

/// <summary>
/// Raises a latency-critical receive thread (a postcopy preempt channel's, the source's return
/// path's) to nice -20, so that on a busy host an arriving page or page request does not wait behind
/// bulk-copy threads for a core. The threads block in recv(2) most of the time, so this takes little
/// from anything else. Needs CAP_SYS_NICE; without it nothing changes.
/// </summary>
internal static partial class LatencyThread
{
    private const int Nice = -20;

    /// <summary>Raises the calling thread; false when not permitted. The thread keeps it until it ends.</summary>
    internal static bool RaiseCurrentThread() => Interop.SetPriority(Interop.PrioProcess, (uint)Interop.GetTid(), Nice) == 0;

    private static partial class Interop
    {
        internal const int PrioProcess = 0;

        [LibraryImport("libc", EntryPoint = "setpriority", SetLastError = true)]
        internal static partial int SetPriority(int which, uint who, int priority);

        [LibraryImport("libc", EntryPoint = "gettid")]
        internal static partial int GetTid();
    }
}
