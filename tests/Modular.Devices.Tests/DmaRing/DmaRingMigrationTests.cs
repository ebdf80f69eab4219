using System.Buffers.Binary;
using Modular.Abstractions.Devices;
using Modular.Devices.DmaRing;
using Modular.Devices.Tests.Doubles;
using static Modular.Devices.DmaRing.DmaRingLayout;
using static Modular.Devices.Tests.Doubles.DeviceTesting;

namespace Modular.Devices.Tests.DmaRing;

[TestClass]
public sealed class DmaRingMigrationTests
{
    // Header in page 2 (its last 16 bytes), descriptors from page 3 on: the test can tell the reads apart.
    private const ulong Ring = 0x2ff0;
    private const uint Size = 8;

    /// <summary>A source with 3 descriptors done and 2 still pending (produced, not kicked).</summary>
    private static (DmaRingDevice Device, TestDeviceContext Context) Source()
    {
        (DmaRingDevice device, TestDeviceContext context) = RingBuilder.NewDevice();
        var driver = new RingBuilder(device, context.Ram, Ring, Size);
        driver.Enable();
        for (int i = 0; i < 3; i++) { driver.Produce(0x10000, 0x20000, 16, OpCopy); }
        driver.Kick();
        driver.SetRegister(Register.RingSize, 4); // sets Busy: a non-default error code to carry over
        driver.Produce(0x10000, 0x21000, 16, OpCopy);
        driver.Produce(0x10000, 0x22000, 16, OpCrc32);
        Out32(device, 0x510, Register.Consumer);  // leave SELECT at a non-default register
        return (device, context);
    }

    /// <summary>A destination device whose guest RAM is a copy of the source's (RAM migrates separately).</summary>
    private static (DmaRingDevice Device, InMemoryGuestMemory Ram) Destination(InMemoryGuestMemory sourceRam)
    {
        var ram = new InMemoryGuestMemory((int)sourceRam.Size);
        ram.Poke(0, sourceRam.Peek(0, (int)sourceRam.Size));
        var device = (DmaRingDevice)new DmaRingFactory().Create(ConfigOf("dma-ring"), new TestDeviceContext(ram));
        return (device, ram);
    }

    [TestMethod]
    public void SaveThenLoadIntoAFreshDeviceGivesTheSameState()
    {
        (DmaRingDevice source, TestDeviceContext context) = Source();
        byte[] state = Save(source);
        Assert.AreEqual(33, state.Length);
        Assert.AreEqual("dma-ring", SectionOf(source).IdString);

        (DmaRingDevice destination, InMemoryGuestMemory ram) = Destination(context.Ram);
        Load(destination, state);

        CollectionAssert.AreEqual(state, Save(destination));
        Assert.AreEqual(3u, destination.ConsumerIndex);
        Assert.AreEqual(DmaRingError.Busy, destination.LastError);
        Assert.AreEqual(3u, In32(destination, 0x514), "SELECT survived: DATA reads CONSUMER");

        // The destination carries on where the source stopped.
        new RingBuilder(destination, ram, Ring, Size).Kick();
        Assert.AreEqual(5u, destination.ConsumerIndex);
        Assert.AreEqual(Crc32.Compute(ram.Peek(0x10000, 16)), BinaryPrimitives.ReadUInt32LittleEndian(ram.Peek(0x22000, 4)));
    }

    [TestMethod]
    public void LoadReadsTheRingHeaderAndPendingDescriptorsFromGuestMemory()
    {
        (DmaRingDevice source, TestDeviceContext context) = Source();
        byte[] state = Save(source);
        (DmaRingDevice destination, InMemoryGuestMemory ram) = Destination(context.Ram);
        ram.ResetTracking();

        Load(destination, state);

        Assert.AreEqual(1, ram.ReadsOfPage(2), "the header (page 2) was read once");
        Assert.AreEqual(2, ram.ReadsOfPage(3), "the two pending descriptors (page 3) were read");
        Assert.AreEqual(0, ram.ReadsOfPage(0x10), "buffers are not touched by a load");
        Assert.AreEqual(0, ram.DirtyPages.Count, "a load writes no guest memory");
    }

    [TestMethod]
    public void ADisabledRingLoadsWithoutTouchingGuestMemory()
    {
        (DmaRingDevice source, TestDeviceContext context) = RingBuilder.NewDevice();
        (DmaRingDevice destination, InMemoryGuestMemory ram) = Destination(context.Ram);
        ram.ResetTracking();
        Load(destination, Save(source));
        Assert.AreEqual(0, ram.ReadsOfPage(0) + ram.ReadsOfPage(1) + ram.ReadsOfPage(2) + ram.ReadsOfPage(3));
    }

    [TestMethod]
    public void AHeaderThatDisagreesWithTheStateIsRefusedAndLeavesTheDeviceUnchanged()
    {
        (DmaRingDevice source, TestDeviceContext context) = Source();
        byte[] state = Save(source);
        (DmaRingDevice destination, InMemoryGuestMemory ram) = Destination(context.Ram);
        new RingBuilder(destination, ram, Ring, Size).SetProducer(3 + Size + 1);
        byte[] before = Save(destination);

        var e = Assert.ThrowsExactly<DeviceStateException>(() => Load(destination, state));
        StringAssert.Contains(e.Message, "dma-ring/0");
        StringAssert.Contains(e.Message, "producer index 12");
        StringAssert.Contains(e.Message, "0x2ff0");
        CollectionAssert.AreEqual(before, Save(destination));
    }

    [TestMethod]
    public void APendingDescriptorAlreadyMarkedDoneIsRefused()
    {
        (DmaRingDevice source, TestDeviceContext context) = Source();
        byte[] state = Save(source);
        (DmaRingDevice destination, InMemoryGuestMemory ram) = Destination(context.Ram);
        ram.Poke(DescriptorAddress(Ring, 4) + DescStatus, [1, 0, 0, 0]);
        byte[] before = Save(destination);

        var e = Assert.ThrowsExactly<DeviceStateException>(() => Load(destination, state));
        StringAssert.Contains(e.Message, "descriptor 4");
        CollectionAssert.AreEqual(before, Save(destination));
    }

    [TestMethod]
    public void ARingOutsideTheDestinationsRamIsRefused()
    {
        (DmaRingDevice source, _) = Source();
        byte[] state = Save(source);
        (DmaRingDevice small, _) = RingBuilder.NewDevice(0x2000);
        var e = Assert.ThrowsExactly<DeviceStateException>(() => Load(small, state));
        StringAssert.Contains(e.Message, "not inside guest RAM");
    }

    [TestMethod]
    [DataRow(12, 1, 2u, "enabled is 2")]
    [DataRow(25, 4, 9u, "error code 9")]
    [DataRow(8, 4, 3u, "ring size 3")]
    public void GarbledFieldsAreRefusedAndLeaveTheDeviceUnchanged(int offset, int size, uint value, string expected)
    {
        (DmaRingDevice source, TestDeviceContext context) = Source();
        byte[] state = Save(source);
        for (int i = 0; i < size; i++) { state[offset + i] = (byte)(value >> (8 * (size - 1 - i))); }
        (DmaRingDevice destination, _) = Destination(context.Ram);
        byte[] before = Save(destination);

        var e = Assert.ThrowsExactly<DeviceStateException>(() => Load(destination, state));
        StringAssert.Contains(e.Message, expected);
        CollectionAssert.AreEqual(before, Save(destination));
    }

    [TestMethod]
    public void TruncatedAndNewerStatesAreRefused()
    {
        (DmaRingDevice source, TestDeviceContext context) = Source();
        byte[] state = Save(source);
        (DmaRingDevice destination, _) = Destination(context.Ram);
        byte[] before = Save(destination);

        var truncated = Assert.ThrowsExactly<DeviceStateException>(() => Load(destination, state[..20]));
        StringAssert.Contains(truncated.Message, "truncated");
        var newer = Assert.ThrowsExactly<DeviceStateException>(() => Load(destination, state, version: 2));
        StringAssert.Contains(newer.Message, "version 2");
        CollectionAssert.AreEqual(before, Save(destination));
    }
}
