using System.Buffers.Binary;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging.Abstractions;
using Modular.Abstractions.Memory;
using Modular.Abstractions.Plugins;
using Modular.Abstractions.Transports;
using Modular.Core.Config;
using Modular.Core.Machine;
using Modular.Core.Migration.Engine;
using Modular.Core.Migration.State;
using Modular.Core.Plugins;
using Modular.Tests.Support;

namespace Modular.Tests.Migration.Postcopy;

/// <summary>
/// The engine's use of a transport's page channel (issue 7), in one process with real parts
/// (userfaultfd, the dma-ring device, the synthetic accelerator) over <see cref="InProcessTransport"/>:
/// postcopy starts before any page is sent, so the dma-ring's ring page is missing when its section
/// loads on the (paused) destination; the load faults, and the fault thread reads the page through
/// the page channel instead of sending REQ_PAGES. Without the capability, REQ_PAGES serves it.
/// </summary>
[TestClass]
public sealed class PageChannelTests
{
    private const ulong RingAddress = 24UL << 20;

    [TestMethod]
    public async Task Postcopy_WithPageChannel_ServesFaultsByRemoteReads_AndSendsNoPageRequests()
    {
        var transport = new InProcessTransport(offerPageChannel: true);
        (OutgoingMigration outgoing, IncomingMigration incoming, VirtualMachine source, VirtualMachine destination, Action cleanup) = await MigrateAsync(transport, "with");
        try
        {
            AssertCompletedWithIdenticalRam(outgoing, incoming, source, destination);
            JsonObject figures = DestinationFigures(incoming);
            Assert.IsGreaterThan(0L, transport.PageChannelReads, "the dma-ring load must have faulted on its ring page and the fault thread read it through the page channel");
            Assert.AreEqual(transport.PageChannelReads, figures["x-modular-page-channel-reads"]!.GetValue<long>(), figures.ToJsonString());
            Assert.AreEqual(0L, outgoing.Stats.PostcopyRequests, "with a page channel, no fault may go over the return path");
            Assert.AreEqual(0L, figures["x-modular-fault-latency"]!["requests"]!.GetValue<long>(), figures.ToJsonString());
            Assert.IsGreaterThan(0L, figures["x-modular-fault-latency"]!["count"]!.GetValue<long>(), "page-channel reads count in the fault latency distribution: " + figures.ToJsonString());
        }
        finally
        {
            cleanup();
        }
    }

    [TestMethod]
    public async Task Postcopy_WithoutPageChannel_FallsBackToPageRequests()
    {
        var transport = new InProcessTransport(offerPageChannel: false);
        (OutgoingMigration outgoing, IncomingMigration incoming, VirtualMachine source, VirtualMachine destination, Action cleanup) = await MigrateAsync(transport, "without");
        try
        {
            AssertCompletedWithIdenticalRam(outgoing, incoming, source, destination);
            JsonObject figures = DestinationFigures(incoming);
            Assert.AreEqual(0L, transport.PageChannelReads);
            Assert.AreEqual(0L, figures["x-modular-page-channel-reads"]!.GetValue<long>(), figures.ToJsonString());
            Assert.IsGreaterThan(0L, outgoing.Stats.PostcopyRequests, "without a page channel the ring page must be requested with REQ_PAGES");
        }
        finally
        {
            cleanup();
        }
    }

    [TestMethod]
    public async Task Postcopy_WhenPageChannelReadsFail_FallsBackToPageRequests()
    {
        var transport = new InProcessTransport(offerPageChannel: true) { FailReadsWith = new TransportException("simulated RDMA READ failure") };
        (OutgoingMigration outgoing, IncomingMigration incoming, VirtualMachine source, VirtualMachine destination, Action cleanup) = await MigrateAsync(transport, "failing");
        try
        {
            AssertCompletedWithIdenticalRam(outgoing, incoming, source, destination);
            JsonObject figures = DestinationFigures(incoming);
            Assert.AreEqual(0L, figures["x-modular-page-channel-reads"]!.GetValue<long>(), figures.ToJsonString());
            Assert.IsGreaterThan(0L, figures["x-modular-page-channel-failures"]?.GetValue<long>() ?? 0, figures.ToJsonString());
            Assert.IsGreaterThan(0L, outgoing.Stats.PostcopyRequests, "a failed page-channel read must fall back to REQ_PAGES");
        }
        finally
        {
            cleanup();
        }
    }

    private static async Task<(OutgoingMigration, IncomingMigration, VirtualMachine, VirtualMachine, Action)> MigrateAsync(InProcessTransport transport, string name)
    {
        string dir = TestPluginCompiler.TempDirectory("pagechannel");
        string config = Path.Combine(dir, "vm.json");
        File.WriteAllText(config, """
            {
              "machine": { "accelerator": "synthetic", "memory": "32M", "synthetic": { "pages-per-second": 2000 } },
              "devices": [ { "type": "dma-ring" } ],
              "migration": { "capabilities": { "postcopy-ram": true }, "parameters": { "max-bandwidth": "32M", "max-postcopy-bandwidth": "32M" } }
            }
            """);
        // The bandwidth caps (max-postcopy-bandwidth from the switch on) keep the background stream from bringing the ring page (24 MiB in, so
        // about 0.75 s) before the device load, on the main thread right after LISTEN, reads it: the
        // load must fault. Uncapped, a fast placement could win that race on a busy host.
        PluginCatalog catalog = PluginCatalog.Load([PluginCatalog.DefaultDirectory]);
        PluginAvailability uffd = catalog.GetFaultBackend("userfaultfd").Probe();
        if (!uffd.IsUsable)
        {
            catalog.Dispose();
            Assert.Inconclusive("userfaultfd is not usable here: " + uffd.Reason);
        }

        VirtualMachine source = VirtualMachine.Create(ConfigLoader.Load(config), catalog, MachineStartMode.Boot);
        VirtualMachine destination = VirtualMachine.Create(ConfigLoader.Load(config, [new("machine.paused", "true")]), catalog, MachineStartMode.Incoming);
        void Cleanup()
        {
            destination.Dispose();
            source.Dispose();
            catalog.Dispose();
            Directory.Delete(dir, recursive: true);
        }

        try
        {
            source.Start();
            DmaRingDriver.FillBelow(source, RingAddress);
            DmaRingDriver.ArmRing(source, RingAddress);
            var endpoint = new TransportEndpoint(InProcessTransport.Scheme, name);
            var destinationSettings = new MigrationSettings(destination.Config.Migration);
            var incoming = new IncomingMigration(destination, transport, endpoint, destinationSettings, NullLogger.Instance, () => catalog.GetFaultBackend(destinationSettings.FaultBackend));
            await incoming.ListenAsync();
            var outgoing = new OutgoingMigration(source, transport, endpoint, new MigrationSettings(source.Config.Migration).Snapshot(), NullLogger.Instance);

            // Postcopy is asked for before the start: not one page goes before the package.
            outgoing.RequestPostcopy();
            outgoing.Start();
            await outgoing.Completion.WaitAsync(TimeSpan.FromSeconds(60));
            await incoming.Completion.WaitAsync(TimeSpan.FromSeconds(60));
            return (outgoing, incoming, source, destination, Cleanup);
        }
        catch
        {
            Cleanup();
            throw;
        }
    }

    private static void AssertCompletedWithIdenticalRam(OutgoingMigration outgoing, IncomingMigration incoming, VirtualMachine source, VirtualMachine destination)
    {
        Assert.AreEqual(MigrationStatus.Completed, outgoing.Status.Current, outgoing.Error);
        Assert.AreEqual(MigrationStatus.Completed, incoming.Status.Current, incoming.Error);
        Assert.AreEqual(PostcopyState.End, incoming.PostcopyState.Current);
        Assert.AreEqual(1u, DmaRingDriver.ReadRegister(destination, 7) & 3, "the ring is enabled without error on the destination");

        // The source is stopped (postmigrate) and the destination paused: their RAM must be equal.
        byte[] expected = new byte[1 << 20];
        byte[] actual = new byte[1 << 20];
        foreach (Core.Memory.RamBlock block in source.Ram.Blocks)
        {
            for (ulong offset = 0; offset < block.Size; offset += (ulong)expected.Length)
            {
                var address = new GuestPhysicalAddress(block.GuestBase.Value + offset);
                source.Ram.Read(address, expected);
                destination.Ram.Read(address, actual);
                if (!expected.AsSpan().SequenceEqual(actual))
                {
                    int at = expected.AsSpan().CommonPrefixLength(actual);
                    Assert.Fail($"RAM block '{block.Name}' differs at offset 0x{offset + (ulong)at:x}");
                }
            }
        }
    }

    private static JsonObject DestinationFigures(IncomingMigration incoming)
    {
        var figures = new JsonObject();
        incoming.AddPostcopyFigures(figures);
        return figures;
    }
}
