using System.Buffers.Binary;
using System.Text;
using Modular.Abstractions.Devices;
using Modular.Devices.DmaRing;
using Modular.Devices.Tests.Doubles;
using static Modular.Devices.DmaRing.DmaRingLayout;
using static Modular.Devices.Tests.Doubles.DeviceTesting;

namespace Modular.Devices.Tests.DmaRing;

[TestClass]
public sealed class DmaRingProcessingTests
{
    private const ulong Ring = 0x1000;

    [TestMethod]
    public void Crc32MatchesTheStandardCheckValue() =>
        Assert.AreEqual(0xCBF43926u, Crc32.Compute("123456789"u8));

    [TestMethod]
    public void RegistersIdentifyTheDevice()
    {
        (DmaRingDevice device, TestDeviceContext context) = RingBuilder.NewDevice();
        var driver = new RingBuilder(device, context.Ram, Ring, 8);
        Assert.AreEqual(new IoPortRange(0x510, 8), device.Ports.Single());
        Assert.AreEqual(IdValue, driver.GetRegister(Register.Id));
        Assert.AreEqual("RING", Encoding.ASCII.GetString(BitConverter.GetBytes(driver.GetRegister(Register.Id))));
        Assert.AreEqual(InterfaceVersion, driver.GetRegister(Register.Version));
        Assert.AreEqual(0xffffffffu, driver.GetRegister(99), "unknown registers read all ones");
        Out32(device, 0x510, 7);
        Assert.AreEqual(7u, In32(device, 0x510), "SELECT reads back");
        Assert.AreEqual(0xff, In8(device, 0x512), "offsets other than SELECT and DATA float");
    }

    [TestMethod]
    public void KickProcessesCopyAndCrcDescriptorsAndMarksOnlyWrittenPagesDirty()
    {
        (DmaRingDevice device, TestDeviceContext context) = RingBuilder.NewDevice();
        InMemoryGuestMemory ram = context.Ram;
        var driver = new RingBuilder(device, ram, Ring, 8);
        driver.Enable();
        Assert.IsTrue(device.Enabled);

        byte[] payload = Enumerable.Range(0, 5000).Select(i => (byte)(i * 7)).ToArray();
        ram.Poke(0x10000, payload);
        ram.Poke(0x30000, "123456789"u8);
        uint copy = driver.Produce(0x10000, 0x20800, 5000, OpCopy);    // dst spans pages 0x20 and 0x21
        uint crc = driver.Produce(0x30000, 0x31000, 9, OpCrc32);
        ram.ResetTracking();

        driver.Kick();

        CollectionAssert.AreEqual(payload, ram.Peek(0x20800, 5000));
        Assert.AreEqual(0xCBF43926u, BinaryPrimitives.ReadUInt32LittleEndian(ram.Peek(0x31000, 4)));
        Assert.AreEqual((DescStatusDone, Crc32.Compute(payload)), driver.Completion(copy));
        Assert.AreEqual((DescStatusDone, 0xCBF43926u), driver.Completion(crc));
        Assert.AreEqual(2u, driver.HeaderConsumer);
        Assert.AreEqual(2u, device.ConsumerIndex);
        Assert.AreEqual(2u, driver.GetRegister(Register.Consumer));
        Assert.AreEqual(2u, driver.GetRegister(Register.Completed));
        Assert.AreEqual(StatusEnabled, driver.GetRegister(Register.Status));

        var dirty = ram.DirtyPages;
        CollectionAssert.IsSubsetOf(new ulong[] { 0x20, 0x21, 0x31, Ring / 4096 }, dirty.ToArray());
        Assert.IsFalse(dirty.Contains(0x10ul), "the source was only read");
        Assert.IsFalse(dirty.Contains(0x30ul), "the source was only read");
        Assert.AreEqual(4, dirty.Count, string.Join(",", dirty));
    }

    [TestMethod]
    public void BadDescriptorsCompleteWithAnErrorStatusAndProcessingGoesOn()
    {
        (DmaRingDevice device, TestDeviceContext context) = RingBuilder.NewDevice();
        var driver = new RingBuilder(device, context.Ram, Ring, 8);
        driver.Enable();
        uint badOp = driver.Produce(0x10000, 0x20000, 4, 9);
        uint tooLong = driver.Produce(0x10000, 0x20000, MaxLength + 1, OpCopy);
        uint srcOut = driver.Produce(0xff000, 0x20000, 0x2000, OpCopy);
        uint dstOut = driver.Produce(0x10000, 0xffffe, 4, OpCrc32);
        uint good = driver.Produce(0x10000, 0x20000, 4, OpCopy);

        driver.Kick();

        const uint failed = DescStatusDone | DescStatusError;
        Assert.AreEqual((failed, (uint)DmaDescriptorError.BadOp), driver.Completion(badOp));
        Assert.AreEqual((failed, (uint)DmaDescriptorError.TooLong), driver.Completion(tooLong));
        Assert.AreEqual((failed, (uint)DmaDescriptorError.SourceOutsideRam), driver.Completion(srcOut));
        Assert.AreEqual((failed, (uint)DmaDescriptorError.DestinationOutsideRam), driver.Completion(dstOut));
        Assert.AreEqual(DescStatusDone, driver.Completion(good).Status);
        Assert.AreEqual(5u, device.ConsumerIndex);
        Assert.AreEqual(DmaRingError.None, device.LastError);
    }

    [TestMethod]
    public void TheRingWrapsAroundAcrossKicks()
    {
        (DmaRingDevice device, TestDeviceContext context) = RingBuilder.NewDevice();
        InMemoryGuestMemory ram = context.Ram;
        var driver = new RingBuilder(device, ram, Ring, 2);
        driver.Enable();
        for (uint i = 0; i < 5; i++)
        {
            ram.Poke(0x10000 + i, [(byte)(0xa0 + i)]);
            driver.Produce(0x10000 + i, 0x20000 + i, 1, OpCopy);
            driver.Kick();
        }

        CollectionAssert.AreEqual(new byte[] { 0xa0, 0xa1, 0xa2, 0xa3, 0xa4 }, ram.Peek(0x20000, 5));
        Assert.AreEqual(5u, device.ConsumerIndex);
        Assert.AreEqual(5ul, device.CompletedDescriptors);
    }

    [TestMethod]
    public void AProducerTooFarAheadIsAnErrorAndNothingIsProcessed()
    {
        (DmaRingDevice device, TestDeviceContext context) = RingBuilder.NewDevice();
        var driver = new RingBuilder(device, context.Ram, Ring, 4);
        driver.Enable();
        driver.SetProducer(5);
        driver.Kick();
        Assert.AreEqual(DmaRingError.BadProducer, device.LastError);
        Assert.AreEqual(StatusEnabled | StatusError, driver.GetRegister(Register.Status));
        Assert.AreEqual(0u, device.ConsumerIndex);
    }

    [TestMethod]
    public void KickWhileDisabledAndBadRingsAreReportedInError()
    {
        (DmaRingDevice device, TestDeviceContext context) = RingBuilder.NewDevice();
        var driver = new RingBuilder(device, context.Ram, Ring, 8);
        driver.Kick();
        Assert.AreEqual((uint)DmaRingError.NotEnabled, driver.GetRegister(Register.Error));

        driver.SetRegister(Register.RingSize, 3);
        driver.SetRegister(Register.Control, 1);
        Assert.AreEqual(DmaRingError.BadRing, device.LastError);
        Assert.IsFalse(device.Enabled);

        driver.SetRegister(Register.RingSize, 8);
        driver.SetRegister(Register.RingAddressLow, 0x1008);
        driver.SetRegister(Register.Control, 1);
        Assert.AreEqual(DmaRingError.BadRing, device.LastError, "misaligned");

        driver.SetRegister(Register.RingAddressLow, 0xffff0);
        driver.SetRegister(Register.Control, 1);
        Assert.AreEqual(DmaRingError.BadRing, device.LastError, "runs past the end of RAM");

        driver.Enable();
        Assert.AreEqual(DmaRingError.None, device.LastError, "enabling a good ring clears the error");
        driver.SetRegister(Register.RingAddressLow, 0x2000);
        Assert.AreEqual(DmaRingError.Busy, device.LastError);
        Assert.AreEqual(new Modular.Abstractions.Memory.GuestPhysicalAddress(Ring), device.RingAddress, "ignored while enabled");
    }

    [TestMethod]
    [DataRow("port", "0xfffa", "devices[0].port")]
    [DataRow("port", "-1", "devices[0].port")]
    [DataRow("instance-id", "0x100000000", "devices[0].instance-id")]
    [DataRow("size", "8", "devices[0].size")]
    public void BadConfigIsRefusedNamingTheKey(string key, string value, string expected)
    {
        var e = Assert.ThrowsExactly<DeviceConfigException>(() => RingBuilder.NewDevice(1024 * 1024, (key, value)));
        StringAssert.Contains(e.Message, expected);
    }

    [TestMethod]
    public void ThePortFollowsTheConfig()
    {
        (DmaRingDevice device, _) = RingBuilder.NewDevice(1024 * 1024, ("port", "0x600"));
        Assert.AreEqual(new IoPortRange(0x600, 8), device.Ports.Single());
    }
}
