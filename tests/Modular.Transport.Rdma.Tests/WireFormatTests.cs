using System.Net;
using Modular.Abstractions.Transports;

namespace Modular.Transports.Rdma.Tests;

/// <summary>The transport's own small formats: immediate data, region descriptors, work ids, endpoints.</summary>
[TestClass]
public sealed class WireFormatTests
{
    [TestMethod]
    [DataRow(0, false)]
    [DataRow(1, true)]
    [DataRow(32, false)]
    [DataRow(65535, true)]
    public void ImmediateDataRoundTripsCreditsAndFin(int credits, bool fin)
    {
        uint imm = StreamLayout.EncodeImmediate(credits, fin);
        Assert.AreEqual((credits, fin), StreamLayout.DecodeImmediate(imm));
    }

    [TestMethod]
    public void ImmediateDataIsInNetworkByteOrder()
    {
        // imm_data is __be32: credits 1 without FIN is 00 00 00 01 on the wire, i.e. 0x01000000 read little-endian.
        Assert.AreEqual(0x0100_0000u, StreamLayout.EncodeImmediate(1, fin: false));
        Assert.AreEqual(0x0000_0100u, StreamLayout.EncodeImmediate(0, fin: true));
    }

    [TestMethod]
    public void RegionDescriptorRoundTrips()
    {
        var region = new RegionDescriptor(0x7f00_1234_5000, 1UL << 32, 0xabcdef01);
        Assert.AreEqual(region, RegionDescriptor.Parse("pc.ram", region.ToBytes()));
    }

    [TestMethod]
    public void AForeignDescriptorIsRejectedByBlockName()
    {
        var error = Assert.ThrowsExactly<TransportException>(() => RegionDescriptor.Parse("pc.ram", new byte[24]));
        Assert.AreEqual(
            "The page channel descriptor for RAM block 'pc.ram' is not an rdma region descriptor (24 bytes; expected 24 starting with \"RMPR\").",
            error.Message);
    }

    [TestMethod]
    public void WorkIdsKeepKindAndSlot()
    {
        foreach (WorkKind kind in new[] { WorkKind.Receive, WorkKind.Send, WorkKind.CreditUpdate, WorkKind.Read })
        {
            Assert.AreEqual((kind, 31), WorkId.Split(WorkId.Make(kind, 31)));
        }

        Assert.AreNotEqual(0UL, WorkId.Make(WorkKind.Receive, 0), "wr_id 0 is reserved for nothing posted.");
    }

    [TestMethod]
    [DataRow("rdma:192.168.1.5:4444", "192.168.1.5", 4444)]
    [DataRow("rdma:[fe80::1]:18515", "fe80::1", 18515)]
    [DataRow("rdma:localhost:7", null, 7)]
    public void EndpointsParse(string uri, string? address, int port)
    {
        RdmaEndpointAddress parsed = RdmaEndpointAddress.Parse(TransportEndpoint.Parse(uri));
        Assert.AreEqual(port, parsed.Port);
        if (address is not null)
        {
            Assert.AreEqual(IPAddress.Parse(address), parsed.Address);
        }
    }

    [TestMethod]
    [DataRow("rdma:nohostport")]
    [DataRow("rdma:host:99999")]
    [DataRow("rdma::4444x")]
    public void MalformedEndpointsSayWhatIsExpected(string uri)
    {
        var error = Assert.ThrowsExactly<TransportException>(() => RdmaEndpointAddress.Parse(TransportEndpoint.Parse(uri)));
        Assert.AreEqual($"'{uri}' is not of the form rdma:HOST:PORT (for example rdma:192.168.1.5:4444).", error.Message);
    }
}
