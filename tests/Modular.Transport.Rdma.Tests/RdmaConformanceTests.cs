using Modular.Abstractions.Transports;
using Modular.Conformance.Transports;

namespace Modular.Transports.Rdma.Tests;

/// <summary>
/// The conformance kit against the rdma transport. Without an RDMA device (this machine, CI) every
/// test is inconclusive with the probe's reason; with Soft-RoCE or a NIC (docs/rdma.md) it runs for
/// real, including the page channel. MODULAR_RDMA_TEST_ADDRESS picks the address (default 127.0.0.1).
/// </summary>
[TestClass]
public sealed class RdmaConformanceTests : TransportConformanceTests
{
    private static string Address => Environment.GetEnvironmentVariable("MODULAR_RDMA_TEST_ADDRESS") ?? "127.0.0.1";

    protected override IMigrationTransport Transport { get; } = new RdmaTransport();

    protected override TransportEndpoint ListenEndpoint() => TransportEndpoint.Parse($"rdma:{Address}:0");
}
