namespace Modular.Devices.DmaRing;

/// <summary>
/// The guest-visible interface of the dma-ring device: ports, registers and the ring in guest RAM
/// (all little-endian). docs/devices.md describes the protocol; these are its numbers.
/// </summary>
public static class DmaRingLayout
{
    /// <summary>Ports claimed from the base port.</summary>
    public const int PortCount = 8;

    /// <summary>base+0: a write selects the register that DATA accesses; a read returns the selection.</summary>
    public const int SelectOffset = 0;

    /// <summary>base+4: reads or writes the selected 32-bit register (narrower accesses use its low bytes).</summary>
    public const int DataOffset = 4;

    /// <summary>Register indices for SELECT.</summary>
    public static class Register
    {
        /// <summary>Read-only <see cref="IdValue"/>.</summary>
        public const uint Id = 0;
        /// <summary>Read-only <see cref="InterfaceVersion"/>.</summary>
        public const uint Version = 1;
        /// <summary>Ring guest-physical address, bits 0-31 (writable while disabled).</summary>
        public const uint RingAddressLow = 2;
        /// <summary>Ring guest-physical address, bits 32-63 (writable while disabled).</summary>
        public const uint RingAddressHigh = 3;
        /// <summary>Number of descriptor slots: a power of two, 1..<see cref="MaxRingSize"/> (writable while disabled).</summary>
        public const uint RingSize = 4;
        /// <summary>Bit 0 enables the ring (validating it and resetting the consumer index to 0); 0 disables it.</summary>
        public const uint Control = 5;
        /// <summary>Any write processes the descriptors from the consumer index up to the header's producer index.</summary>
        public const uint Kick = 6;
        /// <summary>Read-only: <see cref="StatusEnabled"/> | <see cref="StatusError"/>.</summary>
        public const uint Status = 7;
        /// <summary>Read-only: the consumer index (free-running, wraps at 2^32).</summary>
        public const uint Consumer = 8;
        /// <summary>Read-only: descriptors completed since the device was created, low 32 bits.</summary>
        public const uint Completed = 9;
        /// <summary>Read-only: the last <see cref="DmaRingError"/>; cleared by enabling.</summary>
        public const uint Error = 10;
    }

    /// <summary>The ID register's value: the bytes "RING".</summary>
    public const uint IdValue = 0x474e4952;

    /// <summary>The VERSION register's value.</summary>
    public const uint InterfaceVersion = 1;

    /// <summary>STATUS bit: the ring is enabled.</summary>
    public const uint StatusEnabled = 1;

    /// <summary>STATUS bit: ERROR is not <see cref="DmaRingError.None"/>.</summary>
    public const uint StatusError = 2;

    /// <summary>The largest ring.</summary>
    public const uint MaxRingSize = 1024;

    /// <summary>The ring address must be a multiple of this.</summary>
    public const ulong RingAlignment = 16;

    /// <summary>Ring header: u32 producer (guest writes), u32 consumer (device writes), u64 reserved.</summary>
    public const int HeaderSize = 16;

    /// <summary>Offset of the producer index in the header.</summary>
    public const int HeaderProducerOffset = 0;

    /// <summary>Offset of the consumer index in the header.</summary>
    public const int HeaderConsumerOffset = 4;

    /// <summary>Descriptor: u64 src, u64 dst, u32 len, u32 op, u32 status, u32 result.</summary>
    public const int DescriptorSize = 32;

    /// <summary>Descriptor field offsets.</summary>
    public const int DescSrc = 0, DescDst = 8, DescLength = 16, DescOp = 20, DescStatus = 24, DescResult = 28;

    /// <summary>Op: copy len bytes from src to dst. result = CRC-32 of the bytes.</summary>
    public const uint OpCopy = 0;

    /// <summary>Op: write the CRC-32 (IEEE, as zlib) of len bytes at src to dst as a u32. result = the same CRC.</summary>
    public const uint OpCrc32 = 1;

    /// <summary>Descriptor status bit: processed.</summary>
    public const uint DescStatusDone = 1;

    /// <summary>Descriptor status bit: failed; result holds a <see cref="DmaDescriptorError"/>.</summary>
    public const uint DescStatusError = 2;

    /// <summary>The longest buffer one descriptor may name.</summary>
    public const uint MaxLength = 1024 * 1024;

    /// <summary>Guest-physical address of descriptor slot <paramref name="slot"/> of the ring at <paramref name="ring"/>.</summary>
    public static ulong DescriptorAddress(ulong ring, uint slot) => ring + HeaderSize + (ulong)slot * DescriptorSize;

    /// <summary>Bytes the whole ring occupies in guest RAM.</summary>
    public static ulong RingBytes(uint size) => HeaderSize + (ulong)size * DescriptorSize;
}

/// <summary>Device-level errors, in the ERROR register.</summary>
public enum DmaRingError : uint
{
    /// <summary>No error.</summary>
    None = 0,
    /// <summary>CONTROL enable found a bad ring: size not a power of two in 1..1024, address not 16-aligned, or not in RAM.</summary>
    BadRing = 1,
    /// <summary>KICK while the ring is disabled.</summary>
    NotEnabled = 2,
    /// <summary>RING_ADDR or RING_SIZE written while the ring is enabled (ignored).</summary>
    Busy = 3,
    /// <summary>KICK found the header's producer more than RING_SIZE ahead of the consumer; nothing was processed.</summary>
    BadProducer = 4,
}

/// <summary>Per-descriptor errors, in a failed descriptor's result field.</summary>
public enum DmaDescriptorError : uint
{
    /// <summary>The op is not <see cref="DmaRingLayout.OpCopy"/> or <see cref="DmaRingLayout.OpCrc32"/>.</summary>
    BadOp = 1,
    /// <summary>len exceeds <see cref="DmaRingLayout.MaxLength"/>.</summary>
    TooLong = 2,
    /// <summary>[src, src+len) is not in guest RAM.</summary>
    SourceOutsideRam = 3,
    /// <summary>The destination range is not in guest RAM.</summary>
    DestinationOutsideRam = 4,
}
