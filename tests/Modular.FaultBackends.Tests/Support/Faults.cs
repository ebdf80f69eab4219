using Modular.Abstractions.Faults;

namespace Modular.FaultBackends.Tests.Support;

/// <summary>Reading faults in tests.</summary>
internal static class Faults
{
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
