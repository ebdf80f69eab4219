using System.Buffers;
using System.Buffers.Binary;
using Modular.Abstractions.Memory;
using static Modular.Devices.DmaRing.DmaRingLayout;

namespace Modular.Devices.DmaRing;

public sealed partial class DmaRingDevice
{
    /// <summary>
    /// KICK: processes descriptors from the consumer index up to the header's producer index. vCPU
    /// thread, under the device lock. Guest RAM is touched only through <see cref="IGuestMemory"/>;
    /// during postcopy those copies may wait for pages, which holds up only this vCPU and any other
    /// that touches this device.
    /// </summary>
    /// <remarks>
    /// Per descriptor the order is: destination data, then the descriptor's status and result, then the
    /// header's consumer index. A guest that sees the consumer index pass a descriptor (or its DONE
    /// bit) therefore also sees its destination data.
    /// </remarks>
    private void ProcessRing()
    {
        if (!_state.Enabled)
        {
            _state.Error = DmaRingError.NotEnabled;
            return;
        }

        ulong ring = _state.RingAddress;
        uint producer = ReadU32(new GuestPhysicalAddress(ring + HeaderProducerOffset));
        if (producer - _state.Consumer > _state.RingSize)
        {
            _state.Error = DmaRingError.BadProducer;
            return;
        }

        Span<byte> descriptor = stackalloc byte[DescriptorSize];
        Span<byte> completion = stackalloc byte[8];
        Span<byte> index = stackalloc byte[4];
        while (_state.Consumer != producer)
        {
            var slot = new GuestPhysicalAddress(DescriptorAddress(ring, _state.Consumer & (_state.RingSize - 1)));
            _memory.Read(slot, descriptor);
            (uint status, uint result) = Execute(descriptor);

            BinaryPrimitives.WriteUInt32LittleEndian(completion, status);
            BinaryPrimitives.WriteUInt32LittleEndian(completion[4..], result);
            _memory.Write(slot.Add(DescStatus), completion);

            _state.Consumer++;
            _state.Completed++;
            BinaryPrimitives.WriteUInt32LittleEndian(index, _state.Consumer);
            _memory.Write(new GuestPhysicalAddress(ring + HeaderConsumerOffset), index);
        }
    }

    /// <summary>Runs one descriptor; returns its status and result fields.</summary>
    private (uint Status, uint Result) Execute(ReadOnlySpan<byte> descriptor)
    {
        ulong src = BinaryPrimitives.ReadUInt64LittleEndian(descriptor[DescSrc..]);
        ulong dst = BinaryPrimitives.ReadUInt64LittleEndian(descriptor[DescDst..]);
        uint length = BinaryPrimitives.ReadUInt32LittleEndian(descriptor[DescLength..]);
        uint op = BinaryPrimitives.ReadUInt32LittleEndian(descriptor[DescOp..]);

        if (op is not (OpCopy or OpCrc32))
        {
            return Failed(DmaDescriptorError.BadOp);
        }

        if (length > MaxLength)
        {
            return Failed(DmaDescriptorError.TooLong);
        }

        if (!_memory.Contains(new GuestPhysicalAddress(src), length))
        {
            return Failed(DmaDescriptorError.SourceOutsideRam);
        }

        ulong dstLength = op == OpCopy ? length : 4;
        if (!_memory.Contains(new GuestPhysicalAddress(dst), dstLength))
        {
            return Failed(DmaDescriptorError.DestinationOutsideRam);
        }

        byte[] buffer = ArrayPool<byte>.Shared.Rent((int)Math.Max(length, 4));
        try
        {
            Span<byte> data = buffer.AsSpan(0, (int)length);
            _memory.Read(new GuestPhysicalAddress(src), data);
            uint crc = Crc32.Compute(data);
            if (op == OpCopy)
            {
                _memory.Write(new GuestPhysicalAddress(dst), data);
            }
            else
            {
                Span<byte> crcBytes = buffer.AsSpan(0, 4);
                BinaryPrimitives.WriteUInt32LittleEndian(crcBytes, crc);
                _memory.Write(new GuestPhysicalAddress(dst), crcBytes);
            }

            return (DescStatusDone, crc);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private static (uint Status, uint Result) Failed(DmaDescriptorError error) =>
        (DescStatusDone | DescStatusError, (uint)error);

    private uint ReadU32(GuestPhysicalAddress address)
    {
        Span<byte> bytes = stackalloc byte[4];
        _memory.Read(address, bytes);
        return BinaryPrimitives.ReadUInt32LittleEndian(bytes);
    }
}
