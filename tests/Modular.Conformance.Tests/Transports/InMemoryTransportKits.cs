using Modular.Abstractions.Transports;
using Modular.Conformance.Transports;

namespace Modular.Conformance.Tests.Transports;

/// <summary>The kit against the correct in-memory transport: every test must pass (the control).</summary>
[TestClass]
public sealed class InMemoryTransportPassesTheKit : TransportConformanceTests
{
    protected override IMigrationTransport Transport { get; } = new InMemoryTransport();

    protected override TransportEndpoint ListenEndpoint() => new("mem", "auto");
}

/// <summary>The kit against a flawed in-memory transport; not a test class: its tests are run one by one.</summary>
#pragma warning disable MSTEST0030 // Deliberately not a [TestClass]: BrokenTransportTests runs its methods and expects them to fail.
internal sealed class FlawedTransportKit(TransportFlaw flaw) : TransportConformanceTests
#pragma warning restore MSTEST0030
{
    protected override IMigrationTransport Transport { get; } = new InMemoryTransport(flaw);

    protected override TransportEndpoint ListenEndpoint() => new("mem", "auto");

    protected override TimeSpan StepTimeout => TimeSpan.FromSeconds(5);

    protected override TimeSpan AbortDeadline => TimeSpan.FromSeconds(2);
}
