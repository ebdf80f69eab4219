using Modular.Abstractions.Transports;
using Modular.Conformance.Transports;

namespace Example.Tcpz.Tests;

/// <summary>The whole transport conformance suite from the Modular.Conformance package, against tcpz.</summary>
[TestClass]
public sealed class TcpzConformanceTests : TransportConformanceTests
{
    protected override IMigrationTransport Transport { get; } = new TcpzTransport();

    protected override TransportEndpoint ListenEndpoint() => TransportEndpoint.Parse("tcpz:127.0.0.1:0");
}
