using System.Buffers.Binary;
using Modular.Abstractions.Memory;
using Modular.Core.Machine;

namespace Modular.Tests.Migration.Postcopy;

/// <summary>
/// The guest's side of the dma-ring driver protocol (docs/devices.md), played by the test through the
/// machine's bus, so postcopy tests can leave a ring in guest RAM that the device must re-read on load.
/// </summary>
internal static class DmaRingDriver
{
    internal const ushort Port = 0x510;

    /// <summary>
    /// Two pending descriptors (status 0), producer 2, ring enabled, no KICK: the device state says
    /// "consumer 0", the ring in RAM says "producer 2".
    /// </summary>
    /// <summary>
    /// Fills guest RAM below <paramref name="ringAddress"/> with non-zero bytes, so that every page
    /// there travels whole (a zero page is an 8-byte record) and, with max-bandwidth set, the
    /// background stream reaches the ring page only well after the package's device load.
    /// </summary>
    internal static void FillBelow(VirtualMachine machine, ulong ringAddress)
    {
        byte[] chunk = new byte[1 << 20];
        chunk.AsSpan().Fill(0x5A);
        for (ulong at = 0; at < ringAddress; at += (ulong)chunk.Length)
        {
            machine.Ram.Write(new GuestPhysicalAddress(at), chunk.AsSpan(0, (int)Math.Min((ulong)chunk.Length, ringAddress - at)));
        }
    }

    internal static byte[] ArmRing(VirtualMachine machine, ulong ringAddress)
    {
        byte[] ring = new byte[16 + (4 * 32)];
        BinaryPrimitives.WriteUInt32LittleEndian(ring, 2);
        for (int i = 0; i < 2; i++)
        {
            Span<byte> descriptor = ring.AsSpan(16 + (32 * i), 32);
            BinaryPrimitives.WriteUInt64LittleEndian(descriptor, 0x100000 + ((ulong)i * 0x1000));
            BinaryPrimitives.WriteUInt64LittleEndian(descriptor[8..], 0x200000 + ((ulong)i * 0x1000));
            BinaryPrimitives.WriteUInt32LittleEndian(descriptor[16..], 64);
        }

        machine.Ram.Write(new GuestPhysicalAddress(ringAddress), ring);
        WriteRegister(machine, 2, (uint)ringAddress);
        WriteRegister(machine, 3, 0);
        WriteRegister(machine, 4, 4);
        WriteRegister(machine, 5, 1);
        Assert.AreEqual(1u, ReadRegister(machine, 7) & 3, "the ring is enabled without error on the source");
        return ring;
    }

    internal static void WriteRegister(VirtualMachine machine, uint index, uint value)
    {
        Span<byte> bytes = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(bytes, index);
        machine.Bus.PortOut(Port, bytes);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes, value);
        machine.Bus.PortOut(Port + 4, bytes);
    }

    internal static uint ReadRegister(VirtualMachine machine, uint index)
    {
        Span<byte> bytes = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(bytes, index);
        machine.Bus.PortOut(Port, bytes);
        machine.Bus.PortIn(Port + 4, bytes);
        return BinaryPrimitives.ReadUInt32LittleEndian(bytes);
    }
}
