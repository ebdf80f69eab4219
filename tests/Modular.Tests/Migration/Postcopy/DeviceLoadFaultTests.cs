using System.Buffers.Binary;
using Modular.Abstractions.Memory;
using Modular.Abstractions.Plugins;
using Modular.Core.Config;
using Modular.Core.Machine;
using Modular.Core.Migration.Engine;
using Modular.Core.Migration.State;
using Modular.Core.Plugins;
using Modular.Tests.Support;

namespace Modular.Tests.Migration.Postcopy;

/// <summary>
/// The seed's diagram, steps 4 to 5, in one process with real parts (tcp transport, userfaultfd,
/// the dma-ring device, the synthetic accelerator): postcopy starts before any page is sent, so the
/// dma-ring's ring page is missing on the destination when the package's dma-ring section loads; its
/// Load re-reads the ring from guest RAM, faults, the fault thread requests the page, the listen
/// thread places it, and the load carries on. The destination is configured paused, so no vCPU
/// (workload) runs before or after RUN: every page request comes from the device load.
/// </summary>
[TestClass]
public sealed class DeviceLoadFaultTests
{
    private const ulong RingAddress = 48UL << 20;

    [TestMethod]
    public async Task DmaRingLoad_FaultsOnItsMissingRingPage_AndTheListenThreadServesIt()
    {
        string dir = TestPluginCompiler.TempDirectory("devload");
        string config = Path.Combine(dir, "vm.json");
        File.WriteAllText(config, """
            {
              "machine": { "accelerator": "synthetic", "memory": "64M", "synthetic": { "pages-per-second": 2000 } },
              "devices": [ { "type": "dma-ring" } ],
              "migration": { "capabilities": { "postcopy-ram": true }, "parameters": { "max-bandwidth": "32M", "max-postcopy-bandwidth": "32M" } }
            }
            """);
        // The bandwidth caps (max-postcopy-bandwidth from the switch on) keep the background stream from bringing the ring page (48 MiB in, so
        // about 1.5 s) before the device load reads it right after LISTEN: the load must fault.
        using PluginCatalog catalog = PluginCatalog.Load([PluginCatalog.DefaultDirectory]);
        PluginAvailability uffd = catalog.GetFaultBackend("userfaultfd").Probe();
        if (!uffd.IsUsable)
        {
            Assert.Inconclusive("userfaultfd is not usable here: " + uffd.Reason);
        }

        using VirtualMachine source = VirtualMachine.Create(ConfigLoader.Load(config), catalog, MachineStartMode.Boot);
        using VirtualMachine destination = VirtualMachine.Create(ConfigLoader.Load(config, [new("machine.paused", "true")]), catalog, MachineStartMode.Incoming);
        source.Start();

        DmaRingDriver.FillBelow(source, RingAddress);
        byte[] ring = DmaRingDriver.ArmRing(source, RingAddress);

        var sourceMigration = new MigrationController(source, catalog);
        var destinationMigration = new MigrationController(destination, catalog);
        IncomingMigration incoming = await destinationMigration.StartIncomingAsync("tcp:127.0.0.1:0");
        OutgoingMigration outgoing = sourceMigration.StartOutgoing(incoming.BoundEndpoint!.ToString());
        sourceMigration.StartPostcopy();

        await outgoing.Completion.WaitAsync(TimeSpan.FromSeconds(60));
        await incoming.Completion.WaitAsync(TimeSpan.FromSeconds(60));
        Assert.AreEqual(MigrationStatus.Completed, outgoing.Status.Current, outgoing.Error);
        Assert.AreEqual(MigrationStatus.Completed, incoming.Status.Current, incoming.Error);
        Assert.AreEqual(PostcopyState.End, incoming.PostcopyState.Current);

        // Nothing ran on the destination but the device load, so these requests are its faults.
        Assert.IsGreaterThan(0L, outgoing.Stats.PostcopyRequests, "the dma-ring load must have faulted on its ring page and requested it");
        var figures = new System.Text.Json.Nodes.JsonObject();
        incoming.AddPostcopyFigures(figures);
        Assert.IsGreaterThan(0L, figures["x-modular-fault-latency"]!["count"]!.GetValue<long>(), figures.ToJsonString());

        // The device loaded the state and the ring it read is the source's.
        Assert.AreEqual(1u, DmaRingDriver.ReadRegister(destination, 7) & 3, "the ring is enabled without error on the destination");
        Assert.AreEqual(0u, DmaRingDriver.ReadRegister(destination, 8), "consumer index");
        byte[] arrived = new byte[ring.Length];
        destination.Ram.Read(new GuestPhysicalAddress(RingAddress), arrived);
        CollectionAssert.AreEqual(ring, arrived);
        Assert.AreEqual("paused", QmpRunStateName(destination));
        Directory.Delete(dir, recursive: true);
    }

    private static string QmpRunStateName(VirtualMachine machine) => machine.RunState.ToString().ToLowerInvariant();
}
