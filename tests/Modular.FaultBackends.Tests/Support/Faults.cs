using Modular.Abstractions.Faults;

namespace Modular.FaultBackends.Tests.Support;

/// <summary>Reading faults in tests, and how long a test waits on a touch of armed memory.</summary>
internal static class Faults
{
    /// <summary>The target page size the tests arm and place.</summary>
    public const int Page = 4096;

    /// <summary>How long a touch of a missing page must stay blocked to count as waiting.</summary>
    public static readonly TimeSpan Blocked = TimeSpan.FromMilliseconds(200);

    /// <summary>How long a woken touch may take to finish (a busy 2-core host can be slow to schedule it).</summary>
    public static readonly TimeSpan Released = TimeSpan.FromSeconds(10);

    /// <summary>Reads one fault; a watchdog turns a fault that never arrives into a failed assertion instead of a hung run.</summary>
    public static PageFault ReadOne(IFaultBackend backend)
    {
        using Timer watchdog = new(_ => backend.Shutdown(), null, TimeSpan.FromSeconds(10), Timeout.InfiniteTimeSpan);
        Span<PageFault> faults = stackalloc PageFault[1];
        int count = backend.ReadFaults(faults);
        Assert.AreEqual(1, count, "no page fault arrived within 10 s");
        return faults[0];
    }
}
