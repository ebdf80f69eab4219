using Modular.Core.Config;
using Modular.Core.Machine;
using Modular.Core.Migration.Engine;
using Modular.Core.Plugins;
using Modular.Core.Qmp;

namespace Modular.Tests.Migration;

/// <summary>On a host without RDMA, migrate to an rdma: URI fails at once with the plugin's reason, and the guest keeps running.</summary>
[TestClass]
public sealed class RdmaUnavailableTests
{
    [TestMethod]
    public void MigrateToRdmaFailsAtOnceAndTheGuestKeepsRunning()
    {
        using PluginCatalog plugins = PluginCatalog.Load([PluginCatalog.DefaultDirectory]);
        if (plugins.Describe().Single(p => p.Name == "rdma") is { IsUsable: true })
        {
            Assert.Inconclusive("This host has an RDMA device; the no-device behaviour cannot be observed here.");
        }

        ModularConfig config = ConfigLoader.Load(null, [new("machine.accelerator", "synthetic"), new("machine.memory", "16M"), new("devices[0].type", "serial"), new("devices[0].output", "null")]);
        using VirtualMachine machine = VirtualMachine.Create(config, plugins, MachineStartMode.Boot);
        machine.Start();
        var controller = new MigrationController(machine, plugins);

        var ex = Assert.ThrowsExactly<QmpException>(() => controller.StartOutgoing("rdma:127.0.0.1:4444"));

        StringAssert.StartsWith(ex.Message, "Transport 'rdma' cannot be used on this host: no RDMA device: ibv_get_device_list returned NULL");
        Assert.AreEqual(QmpRunState.Running, machine.RunState);
        Assert.IsNull(controller.Outgoing, "no migration was started");
    }
}
