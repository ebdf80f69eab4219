using System.Composition;
using System.Composition.Hosting;
using Modular.Abstractions.Devices;
using Modular.Abstractions.Plugins;
using Modular.Core.Devices;
using Modular.Devices.Serial;
using Modular.Devices.Tests.Doubles;
using static Modular.Devices.Tests.Doubles.DeviceTesting;

namespace Modular.Devices.Tests;

[TestClass]
public sealed class PluginExportTests
{
    /// <summary>What the host's MEF container sees: factory plus its metadata.</summary>
    public sealed class DeviceTypeMetadata
    {
        public string Type { get; set; } = "";
    }

    [TestMethod]
    public void TheAssemblyExportsTheThreeDeviceTypes()
    {
        using CompositionHost container = new ContainerConfiguration()
            .WithAssembly(typeof(SerialFactory).Assembly)
            .CreateContainer();
        var exports = container.GetExports<Lazy<IDeviceModelFactory, DeviceTypeMetadata>>().ToList();

        CollectionAssert.AreEquivalent(new[] { "serial", "debug-exit", "dma-ring" }, exports.Select(e => e.Metadata.Type).ToArray());
        Assert.IsTrue(exports.All(e => e.Value.Probe().IsUsable));
    }

    [TestMethod]
    public void DefaultDevicesFitOnOneBusAndDispatchThroughIt()
    {
        var context = new TestDeviceContext();
        var bus = new IoBus();
        using var serial = (SerialDevice)new SerialFactory().Create(ConfigOf("serial", ("output", "null")), context);
        using IDeviceModel exit = new Modular.Devices.DebugExit.DebugExitFactory().Create(ConfigOf("debug-exit"), context);
        using IDeviceModel ring = new Modular.Devices.DmaRing.DmaRingFactory().Create(ConfigOf("dma-ring"), context);
        bus.Add(serial);
        bus.Add(exit);
        bus.Add(ring);

        bus.PortOut(0x3f8, "A"u8);
        bus.PortOut(0x3f8, "B"u8);
        Span<byte> lsr = stackalloc byte[1];
        bus.PortIn(0x3fd, lsr);
        bus.PortOut(0xf4, [3]);

        Assert.AreEqual("AB", serial.OutputTail);
        Assert.AreEqual(0x60, lsr[0]);
        Assert.AreEqual(7, context.ExitRequests.Single());
    }

    [TestMethod]
    public void TwoSerialPortsOnOnePortAreRefusedNamingBoth()
    {
        var context = new TestDeviceContext();
        var bus = new IoBus();
        using IDeviceModel com1 = new SerialFactory().Create(new DeviceConfig("com1", "serial", "devices[0]", new Dictionary<string, string> { ["output"] = "null" }), context);
        using IDeviceModel other = new SerialFactory().Create(new DeviceConfig("console", "serial", "devices[1]", new Dictionary<string, string> { ["output"] = "null", ["port"] = "0x3f8" }), context);
        bus.Add(com1);

        var e = Assert.ThrowsExactly<IoBusAttachException>(() => bus.Add(other));
        StringAssert.Contains(e.Message, "'console'");
        StringAssert.Contains(e.Message, "'com1'");
        StringAssert.Contains(e.Message, "0x3f8-0x3ff");
    }
}
