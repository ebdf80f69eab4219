using Modular.Abstractions.Devices;
using Modular.Devices.Serial;
using Modular.Devices.Tests.Doubles;
using static Modular.Devices.Tests.Doubles.DeviceTesting;

namespace Modular.Devices.Tests.Serial;

[TestClass]
public sealed class SerialMigrationTests
{
    private const int Base = 0x3f8;

    private static SerialDevice NewSerial() =>
        (SerialDevice)new SerialFactory().Create(ConfigOf("serial", ("output", "null")), new TestDeviceContext());

    /// <summary>A device with every register away from its reset value.</summary>
    private static SerialDevice Programmed()
    {
        SerialDevice serial = NewSerial();
        Out8(serial, Base + 3, 0x80);       // DLAB
        Out8(serial, Base, 0x01);
        Out8(serial, Base + 1, 0x00);       // 115200 baud
        Out8(serial, Base + 3, 0x1b);       // 8E1, DLAB off
        Out8(serial, Base + 2, 0xc7);       // FIFO on, trigger 14
        Out8(serial, Base + 1, 0x03);       // IER: rx + thr
        Out8(serial, Base + 4, 0x1b);       // loopback, OUT2, RTS, DTR
        Out8(serial, Base, 0x42);           // loops back into RBR
        Out8(serial, Base + 7, 0x99);
        return serial;
    }

    [TestMethod]
    public void SectionIsSerialVersionOne()
    {
        using SerialDevice serial = NewSerial();
        ISaveVmSection section = SectionOf(serial);
        Assert.AreEqual("serial", section.IdString);
        Assert.AreEqual(1u, section.Version);
        Assert.AreEqual(1u, section.MinimumVersion);
        Assert.AreEqual(11, Save(serial).Length);
    }

    [TestMethod]
    public void SaveThenLoadIntoAFreshDeviceGivesTheSameRegisters()
    {
        using SerialDevice source = Programmed();
        byte[] state = Save(source);
        using SerialDevice destination = NewSerial();
        CollectionAssert.AreNotEqual(state, Save(destination), "the fresh device starts different");

        Load(destination, state);

        CollectionAssert.AreEqual(state, Save(destination));
        Assert.AreEqual(0x61, In8(destination, Base + 5), "data ready survived");
        Assert.AreEqual(0x42, In8(destination, Base));
        Assert.AreEqual(0x99, In8(destination, Base + 7));
        Out8(destination, Base + 3, 0x9b);
        Assert.AreEqual(0x01, In8(destination, Base), "divisor survived");
    }

    [TestMethod]
    public void TruncatedStateIsRefusedAndLeavesTheDeviceUnchanged()
    {
        using SerialDevice source = Programmed();
        byte[] state = Save(source);
        using SerialDevice destination = NewSerial();
        byte[] before = Save(destination);

        var e = Assert.ThrowsExactly<DeviceStateException>(() => Load(destination, state[..^1]));
        StringAssert.Contains(e.Message, "serial/0");
        StringAssert.Contains(e.Message, "truncated");
        CollectionAssert.AreEqual(before, Save(destination));
    }

    [TestMethod]
    public void TrailingBytesAreRefused()
    {
        using SerialDevice destination = NewSerial();
        byte[] before = Save(destination);
        var e = Assert.ThrowsExactly<DeviceStateException>(() => Load(destination, [.. before, 0]));
        StringAssert.Contains(e.Message, "trailing");
        CollectionAssert.AreEqual(before, Save(destination));
    }

    [TestMethod]
    [DataRow(1, 0xff, "ier")]
    [DataRow(2, 0x30, "fcr")]
    [DataRow(4, 0xe0, "mcr")]
    [DataRow(5, 0x00, "transmitter is busy")]
    [DataRow(5, 0x7f, "lsr")]
    [DataRow(6, 0x00, "msr")]
    [DataRow(10, 0x02, "thr_interrupt_pending")]
    public void GarbledFieldsAreRefusedAndLeaveTheDeviceUnchanged(int offset, int value, string expected)
    {
        using SerialDevice source = Programmed();
        byte[] state = Save(source);
        state[offset] = (byte)value;
        using SerialDevice destination = NewSerial();
        byte[] before = Save(destination);

        var e = Assert.ThrowsExactly<DeviceStateException>(() => Load(destination, state));
        StringAssert.Contains(e.Message, expected);
        CollectionAssert.AreEqual(before, Save(destination));
    }

    [TestMethod]
    public void ANewerVersionIsRefused()
    {
        using SerialDevice source = Programmed();
        using SerialDevice destination = NewSerial();
        byte[] before = Save(destination);
        var e = Assert.ThrowsExactly<DeviceStateException>(() => Load(destination, Save(source), version: 2));
        StringAssert.Contains(e.Message, "version 2");
        CollectionAssert.AreEqual(before, Save(destination));
    }
}
