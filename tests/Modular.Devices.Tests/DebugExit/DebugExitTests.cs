using Modular.Abstractions.Devices;
using Modular.Devices.DebugExit;
using Modular.Devices.Tests.Doubles;
using static Modular.Devices.Tests.Doubles.DeviceTesting;

namespace Modular.Devices.Tests.DebugExit;

[TestClass]
public sealed class DebugExitTests
{
    [TestMethod]
    public void AWriteRequestsExitWithQemuEncoding()
    {
        var context = new TestDeviceContext();
        using IDeviceModel device = new DebugExitFactory().Create(ConfigOf("debug-exit"), context);
        Assert.AreEqual(new IoPortRange(0xf4, 1), device.Ports.Single());

        Out8(device, 0xf4, 0x10);
        Out8(device, 0xf4, 0x00);
        CollectionAssert.AreEqual(new[] { 0x21, 0x01 }, context.ExitRequests);
    }

    [TestMethod]
    public void WideWritesUseTheWholeValue()
    {
        var context = new TestDeviceContext();
        using IDeviceModel device = new DebugExitFactory().Create(ConfigOf("debug-exit", ("iobase", "0x501"), ("iosize", "4")), context);
        Assert.AreEqual(new IoPortRange(0x501, 4), device.Ports.Single());

        Out32(device, 0x501, 0x1234);
        Assert.AreEqual((0x1234 << 1) | 1, context.ExitRequests.Single());
        Assert.AreEqual(unchecked((int)0xffffffff), DebugExitDevice.ExitCodeFor(0xffffffff));
    }

    [TestMethod]
    public void ReadsReturnZeroAndRequestNothing()
    {
        var context = new TestDeviceContext();
        using IDeviceModel device = new DebugExitFactory().Create(ConfigOf("debug-exit"), context);
        Assert.AreEqual(0, In8(device, 0xf4));
        Assert.AreEqual(0, context.ExitRequests.Count);
    }

    [TestMethod]
    [DataRow("iosize", "3", "devices[0].iosize")]
    [DataRow("iosize", "8", "devices[0].iosize")]
    [DataRow("iobase", "0xffff0", "devices[0].iobase")]
    [DataRow("code", "1", "devices[0].code")]
    public void BadConfigIsRefusedNamingTheKey(string key, string value, string expected)
    {
        var e = Assert.ThrowsExactly<DeviceConfigException>(
            () => new DebugExitFactory().Create(ConfigOf("debug-exit", (key, value)), new TestDeviceContext()));
        StringAssert.Contains(e.Message, expected);
    }

    [TestMethod]
    public void MigratesThroughAnEmptyVersionedSection()
    {
        using IDeviceModel device = new DebugExitFactory().Create(ConfigOf("debug-exit"), new TestDeviceContext());
        Assert.IsNull(device.Migration.UnmigratableReason);
        ISaveVmSection section = SectionOf(device);
        Assert.AreEqual("debug-exit", section.IdString);
        Assert.AreEqual(1u, section.Version);
        Assert.AreEqual(0, Save(device).Length);

        Load(device, []);
        var trailing = Assert.ThrowsExactly<DeviceStateException>(() => Load(device, [1]));
        StringAssert.Contains(trailing.Message, "trailing");
        var newer = Assert.ThrowsExactly<DeviceStateException>(() => Load(device, [], version: 2));
        StringAssert.Contains(newer.Message, "version 2");
    }
}
