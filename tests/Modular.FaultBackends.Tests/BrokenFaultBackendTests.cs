using Modular.Abstractions.Faults;
using Modular.Abstractions.Plugins;
using Modular.Conformance.Faults;
using Modular.FaultBackends.Userfaultfd;

namespace Modular.FaultBackends.Tests;

/// <summary>What a <see cref="FlawedBackendFactory"/> gets wrong on purpose, on top of the real userfaultfd backend.</summary>
internal enum FaultBackendFlaw
{
    ReportsTheNextPage,
    ClaimsASecondPlacementPlacedIt,
    ProbeGivesNoReason,
}

/// <summary>The real userfaultfd backend behind a decorator that breaks one rule.</summary>
internal sealed class FlawedBackendFactory(FaultBackendFlaw flaw) : IFaultBackendFactory
{
    private readonly UserfaultfdBackendFactory _real = new();

    public PluginAvailability Probe() => flaw == FaultBackendFlaw.ProbeGivesNoReason ? new PluginAvailability(false, null) : _real.Probe();

    public IFaultBackend Open() => new Flawed(_real.Open(), flaw);

    private sealed class Flawed(IFaultBackend inner, FaultBackendFlaw flaw) : IFaultBackend
    {
        public void Arm(HostRamRange range) => inner.Arm(range);

        public void Disarm(HostRamRange range) => inner.Disarm(range);

        public int ReadFaults(Span<PageFault> faults)
        {
            int count = inner.ReadFaults(faults);
            if (flaw == FaultBackendFlaw.ReportsTheNextPage)
            {
                for (int i = 0; i < count; i++)
                {
                    faults[i] = faults[i] with { HostAddress = faults[i].HostAddress + Environment.SystemPageSize };
                }
            }

            return count;
        }

        public PlaceResult PlacePage(nint hostAddress, ReadOnlySpan<byte> contents) => Lie(inner.PlacePage(hostAddress, contents));

        public PlaceResult PlaceZeroPage(nint hostAddress, ulong pageSize) => Lie(inner.PlaceZeroPage(hostAddress, pageSize));

        public void Wake(nint hostAddress, ulong length) => inner.Wake(hostAddress, length);

        public void Shutdown() => inner.Shutdown();

        public void Dispose() => inner.Dispose();

        private PlaceResult Lie(PlaceResult result) =>
            flaw == FaultBackendFlaw.ClaimsASecondPlacementPlacedIt && result == PlaceResult.AlreadyPresent ? PlaceResult.Placed : result;
    }
}

#pragma warning disable MSTEST0030 // Deliberately not a [TestClass]: BrokenFaultBackendTests runs its methods and expects them to fail.
internal sealed class FlawedFaultBackendKit(FaultBackendFlaw flaw) : FaultBackendConformanceTests
#pragma warning restore MSTEST0030
{
    protected override IFaultBackendFactory Factory { get; } = new FlawedBackendFactory(flaw);

    protected override string Name => "flawed-uffd";
}

/// <summary>The fault backend kit fails deliberately broken backends, with a message that says what is wrong.</summary>
[TestClass]
public sealed class BrokenFaultBackendTests
{
    [TestMethod]
    public void AFaultReportedAtTheWrongPageFails()
    {
        var failure = Assert.ThrowsExactly<AssertFailedException>(() => new FlawedFaultBackendKit(FaultBackendFlaw.ReportsTheNextPage).TouchOfAnArmedMissingPageIsDeliveredWithItsAddress());
        StringAssert.StartsWith(failure.Message, "flawed-uffd: a read at 0x");
        StringAssert.Contains(failure.Message, "the fault must carry the touched address (its page at least).");
    }

    [TestMethod]
    public void ASecondPlacementReportedAsPlacedFails()
    {
        var failure = Assert.ThrowsExactly<AssertFailedException>(() => new FlawedFaultBackendKit(FaultBackendFlaw.ClaimsASecondPlacementPlacedIt).PlacingAnAlreadyPlacedPageIsHandled());
        Assert.AreEqual(
            "flawed-uffd: placing a page that is already there returned Placed; it must return AlreadyPresent (and wake waiters) rather than fail or overwrite. (expected AlreadyPresent, got Placed)",
            failure.Message);
    }

    [TestMethod]
    public void AProbeThatSaysNoWithoutAReasonFails()
    {
        var failure = Assert.ThrowsExactly<AssertFailedException>(() => new FlawedFaultBackendKit(FaultBackendFlaw.ProbeGivesNoReason).ProbeSaysWhetherItIsUsableAndWhyNot());
        Assert.AreEqual("flawed-uffd: Probe() says the backend is not usable but gives no reason; the operator needs to know what is missing and what to do.", failure.Message);
    }
}
