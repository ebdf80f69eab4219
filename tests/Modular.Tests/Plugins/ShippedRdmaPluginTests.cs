using Modular.Abstractions.Transports;
using Modular.Core.Plugins;

namespace Modular.Tests.Plugins;

/// <summary>
/// The shipped rdma plugin as the host sees it (loaded from the plugins folder beside the test output,
/// like `modular plugins`): on a host without kernel RDMA support it is listed as not usable, with the
/// reason, and selecting it for a migration fails at once with that reason.
/// </summary>
[TestClass]
public sealed class ShippedRdmaPluginTests
{
    private const string NoDevice = "no RDMA device: ibv_get_device_list returned NULL (errno 38, Function not implemented); the kernel has no RDMA support";

    private static void RequireHostWithoutRdma()
    {
        if (Directory.Exists("/sys/class/infiniband_verbs"))
        {
            Assert.Inconclusive("This host has kernel RDMA support; the no-device behaviour cannot be observed here.");
        }
    }

    [TestMethod]
    public void PluginsListsRdmaAsNotUsableWithTheReason()
    {
        RequireHostWithoutRdma();
        using PluginCatalog catalog = PluginCatalog.Load([PluginCatalog.DefaultDirectory]);

        PluginPartInfo rdma = catalog.Describe().Single(p => p.Kind == PluginKind.Transport && p.Name == "rdma");
        Assert.AreEqual("transport-rdma", rdma.Plugin);
        Assert.IsFalse(rdma.IsUsable);
        Assert.IsNotNull(rdma.Reason);
        Assert.StartsWith(NoDevice, rdma.Reason);
        StringAssert.Contains(rdma.Reason, "rdma link add rxe0 type rxe netdev lo");
    }

    [TestMethod]
    public void MigratingToAnRdmaUriFailsAtOnce()
    {
        RequireHostWithoutRdma();
        using PluginCatalog catalog = PluginCatalog.Load([PluginCatalog.DefaultDirectory]);
        IMigrationTransport rdma = catalog.GetTransport("rdma");

        ValueTask<IMigrationConnection> connect = rdma.ConnectAsync(TransportEndpoint.Parse("rdma:10.0.0.2:4444"));
        Assert.IsTrue(connect.IsCompleted, "The connect attempt should fail before any I/O.");
        var error = Assert.ThrowsExactly<TransportException>(() => connect.AsTask().GetAwaiter().GetResult());
        Assert.StartsWith("Cannot connect to rdma:10.0.0.2:4444: " + NoDevice, error.Message);
    }
}
