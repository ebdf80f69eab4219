using Modular.Abstractions.Plugins;
using Modular.Abstractions.Transports;

namespace Modular.Transports.Rdma.Tests;

/// <summary>
/// What a host without RDMA sees: the probe says why and how to get RDMA, and connect/listen fail at
/// once with the same reason. These run where the kernel has no RDMA support (the CI machine); on a
/// host with RDMA they are inconclusive, since the behaviour under test cannot happen there.
/// </summary>
[TestClass]
public sealed class NoDeviceTests
{
    private const string ExpectedReason =
        "no RDMA device: ibv_get_device_list returned NULL (errno 38, Function not implemented); " +
        "the kernel has no RDMA support (no /sys/class/infiniband_verbs); load Soft-RoCE over a network interface " +
        "(as root: `modprobe rdma_rxe; rdma link add rxe0 type rxe netdev lo`; the rdma tool is in iproute2) " +
        "or install an RDMA NIC with its kernel driver; see docs/rdma.md.";

    private static void RequireHostWithoutRdma()
    {
        if (Directory.Exists("/sys/class/infiniband_verbs"))
        {
            Assert.Inconclusive("This host has kernel RDMA support (/sys/class/infiniband_verbs exists); the no-device behaviour cannot be observed here.");
        }

        if (!File.Exists("/usr/lib/x86_64-linux-gnu/libibverbs.so.1") && !File.Exists("/usr/lib64/libibverbs.so.1"))
        {
            Assert.Inconclusive("libibverbs.so.1 is not installed, so ibv_get_device_list cannot be called: " + AbiTests.InstallHeaders);
        }
    }

    [TestMethod]
    public void ProbeSaysThereIsNoDeviceAndHowToGetOne()
    {
        RequireHostWithoutRdma();
        PluginAvailability availability = new RdmaTransport().Probe();
        Assert.IsFalse(availability.IsUsable);
        Assert.AreEqual(ExpectedReason, availability.Reason);
    }

    [TestMethod]
    public void ConnectFailsAtOnceWithTheProbeReason()
    {
        RequireHostWithoutRdma();
        ValueTask<IMigrationConnection> connect = new RdmaTransport().ConnectAsync(TransportEndpoint.Parse("rdma:127.0.0.1:4444"));
        Assert.IsTrue(connect.IsCompleted, "ConnectAsync should fail before doing any I/O.");
        var error = Assert.ThrowsExactly<TransportException>(() => connect.AsTask().GetAwaiter().GetResult());
        Assert.AreEqual("Cannot connect to rdma:127.0.0.1:4444: " + ExpectedReason, error.Message);
    }

    [TestMethod]
    public void ListenFailsAtOnceWithTheProbeReason()
    {
        RequireHostWithoutRdma();
        var error = Assert.ThrowsExactly<TransportException>(
            () => new RdmaTransport().ListenAsync(TransportEndpoint.Parse("rdma:0.0.0.0:0")));
        Assert.AreEqual("Cannot listen on rdma:0.0.0.0:0: " + ExpectedReason, error.Message);
    }

    [TestMethod]
    public void AMissingLibraryNamesThePackageThatProvidesIt()
    {
        PluginAvailability noVerbs = RdmaAvailability.Probe("libibverbs-not-here.so.1", "librdmacm.so.1");
        Assert.IsFalse(noVerbs.IsUsable);
        Assert.AreEqual(
            "libibverbs-not-here.so.1 is not installed: install the libibverbs1 (with ibverbs-providers for the device drivers) package " +
            "(Debian/Ubuntu: apt-get install libibverbs1).",
            noVerbs.Reason);

        PluginAvailability noCm = RdmaAvailability.Probe("libc.so.6", "librdmacm-not-here.so.1");
        Assert.AreEqual("librdmacm-not-here.so.1 is not installed: install the librdmacm1 package (Debian/Ubuntu: apt-get install librdmacm1).", noCm.Reason);
    }

    [TestMethod]
    public void AnotherSchemeIsRefusedByName()
    {
        var error = Assert.ThrowsExactly<TransportException>(
            () => new RdmaTransport().ListenAsync(TransportEndpoint.Parse("tcp:0.0.0.0:0")));
        Assert.AreEqual("The rdma transport cannot listen on 'tcp:0.0.0.0:0': its scheme is not rdma.", error.Message);
    }
}
