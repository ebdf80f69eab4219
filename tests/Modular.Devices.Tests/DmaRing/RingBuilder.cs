using System.Buffers.Binary;
using Modular.Abstractions.Devices;
using Modular.Devices.DmaRing;
using Modular.Devices.Tests.Doubles;
using static Modular.Devices.DmaRing.DmaRingLayout;
using static Modular.Devices.Tests.Doubles.DeviceTesting;

namespace Modular.Devices.Tests.DmaRing;

/// <summary>Plays the guest driver of a dma-ring device: programs registers, fills descriptors, kicks.</summary>
public sealed class RingBuilder(DmaRingDevice device, InMemoryGuestMemory ram, ulong ring, uint size, ushort basePort = 0x510)
{
    public uint Producer { get; private set; }

    public void SetRegister(uint index, uint value)
    {
        Out32(device, basePort + SelectOffset, index);
        Out32(device, basePort + DataOffset, value);
    }

    public uint GetRegister(uint index)
    {
        Out32(device, basePort + SelectOffset, index);
        return In32(device, basePort + DataOffset);
    }

    public void Enable()
    {
        SetRegister(Register.RingAddressLow, (uint)ring);
        SetRegister(Register.RingAddressHigh, (uint)(ring >> 32));
        SetRegister(Register.RingSize, size);
        SetRegister(Register.Control, 1);
    }

    /// <summary>Writes the next descriptor (status cleared) and publishes it in the header.</summary>
    public uint Produce(ulong src, ulong dst, uint length, uint op)
    {
        var d = new byte[DescriptorSize];
        BinaryPrimitives.WriteUInt64LittleEndian(d.AsSpan(DescSrc), src);
        BinaryPrimitives.WriteUInt64LittleEndian(d.AsSpan(DescDst), dst);
        BinaryPrimitives.WriteUInt32LittleEndian(d.AsSpan(DescLength), length);
        BinaryPrimitives.WriteUInt32LittleEndian(d.AsSpan(DescOp), op);
        uint index = Producer;
        ram.Poke(DescriptorAddress(ring, index & (size - 1)), d);
        SetProducer(++Producer);
        return index;
    }

    public void SetProducer(uint producer)
    {
        Producer = producer;
        var p = new byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(p, producer);
        ram.Poke(ring + HeaderProducerOffset, p);
    }

    public void Kick() => SetRegister(Register.Kick, 1);

    public (uint Status, uint Result) Completion(uint index)
    {
        byte[] d = ram.Peek(DescriptorAddress(ring, index & (size - 1)), DescriptorSize);
        return (BinaryPrimitives.ReadUInt32LittleEndian(d.AsSpan(DescStatus)), BinaryPrimitives.ReadUInt32LittleEndian(d.AsSpan(DescResult)));
    }

    public uint HeaderConsumer => BinaryPrimitives.ReadUInt32LittleEndian(ram.Peek(ring + HeaderConsumerOffset, 4));

    public static (DmaRingDevice Device, TestDeviceContext Context) NewDevice(int ramSize = 1024 * 1024, params (string, string)[] config)
    {
        var context = new TestDeviceContext(new InMemoryGuestMemory(ramSize));
        IDeviceModel device = new DmaRingFactory().Create(ConfigOf("dma-ring", config), context);
        return ((DmaRingDevice)device, context);
    }
}
