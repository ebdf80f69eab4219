using Modular.Abstractions.Devices;
using Modular.Core.Config;

namespace Modular.Tests.Config;

/// <summary>
/// --set devices[N].KEY without a devices list in the file starts from the default list (one serial
/// port, com1), so a device can be added beside it or the serial configured, as the CLI help says.
/// </summary>
[TestClass]
public sealed class DeviceOverrideTests
{
    [TestMethod]
    public void AddingASecondDeviceKeepsTheDefaultSerial()
    {
        ModularConfig config = ConfigLoader.Load(null, [new("devices[1].type", "debug-exit")]);

        Assert.AreEqual(2, config.Devices.Count);
        Assert.AreEqual(("com1", "serial"), (config.Devices[0].Id, config.Devices[0].Type));
        Assert.AreEqual(("debug-exit1", "debug-exit"), (config.Devices[1].Id, config.Devices[1].Type));
    }

    [TestMethod]
    public void AKeyOfTheFirstDeviceConfiguresTheDefaultSerial()
    {
        ModularConfig config = ConfigLoader.Load(null, [new("devices[0].output", "null")]);

        DeviceConfig serial = config.Devices.Single();
        Assert.AreEqual(("com1", "serial", "null"), (serial.Id, serial.Type, serial.Properties["output"]));
    }

    [TestMethod]
    public void ATypeForTheFirstDeviceReplacesTheDefault()
    {
        ModularConfig config = ConfigLoader.Load(null, [new("devices[0].type", "debug-exit")]);

        DeviceConfig device = config.Devices.Single();
        Assert.AreEqual(("debug-exit0", "debug-exit"), (device.Id, device.Type));
    }

    [TestMethod]
    public void AFileWithADevicesListIsNotMergedWithTheDefault()
    {
        string path = Path.Combine(Path.GetTempPath(), $"modular-devices-{Guid.NewGuid():N}.json");
        File.WriteAllText(path, """{ "devices": [ { "type": "dma-ring" } ] }""");
        try
        {
            ModularConfig config = ConfigLoader.Load(path, [new("devices[1].type", "debug-exit")]);

            CollectionAssert.AreEqual(new[] { "dma-ring", "debug-exit" }, config.Devices.Select(d => d.Type).ToArray());
        }
        finally
        {
            File.Delete(path);
        }
    }

    [TestMethod]
    public void TheExampleAbGuestConfigIsValidAndItsKernelIsBuilt()
    {
        string path = Path.Combine(Support.TestPluginCompiler.RepoRoot, "examples", "ab-guest.json");

        ModularConfig config = ConfigLoader.Load(path);

        Assert.AreEqual(Path.Combine(Support.TestPluginCompiler.RepoRoot, "artifacts", "guests", "ab-guest.elf"), config.Machine.Kernel);
        Assert.IsTrue(File.Exists(config.Machine.Kernel), "the build puts the A/B guest where the example expects it");
        CollectionAssert.AreEqual(new[] { "serial", "debug-exit" }, config.Devices.Select(d => d.Type).ToArray());
    }
}
