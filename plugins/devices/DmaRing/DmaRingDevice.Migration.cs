using System.Buffers.Binary;
using Modular.Abstractions.Devices;
using Modular.Abstractions.Memory;
using static Modular.Devices.DmaRing.DmaRingLayout;

namespace Modular.Devices.DmaRing;

public sealed partial class DmaRingDevice
{
    /// <summary>The savevm section id string.</summary>
    public const string SectionIdString = "dma-ring";

    /// <summary>
    /// Section <c>dma-ring</c> version 1, 33 bytes: be64 ring_address, be32 ring_size, u8 enabled (0/1),
    /// be32 consumer, be64 completed, be32 error, be32 select. The producer index is not saved: it
    /// lives in guest RAM (the ring header), which migrates as RAM.
    /// </summary>
    private sealed class Section(DmaRingDevice device, uint instanceId) : ISaveVmSection
    {
        public string IdString => SectionIdString;

        public uint InstanceId => instanceId;

        public uint Version => 1;

        public uint MinimumVersion => 1;

        /// <summary>Migration thread, vCPUs stopped (so the ring header is stable).</summary>
        public void Save(SaveVmWriter writer)
        {
            State s;
            lock (device._lock) { s = device._state; }

            writer.WriteBe64(s.RingAddress);
            writer.WriteBe32(s.RingSize);
            writer.WriteU8(s.Enabled ? (byte)1 : (byte)0);
            writer.WriteBe32(s.Consumer);
            writer.WriteBe64(s.Completed);
            writer.WriteBe32((uint)s.Error);
            writer.WriteBe32(s.Select);
        }

        /// <summary>
        /// Main incoming thread, vCPUs stopped. Validates the fields, then for an enabled ring re-reads
        /// the ring from guest RAM: the header, and every descriptor between the consumer index and the
        /// producer index (the work still to do after the move). During postcopy those reads fault and
        /// wait until the pages arrive, which is how the ring's pages are pulled over first. The device
        /// changes only when everything checked out.
        /// </summary>
        public void Load(SaveVmReader reader, uint version)
        {
            if (version != 1)
            {
                throw new DeviceStateException(
                    $"Section '{reader.SectionName}': version {version} is not supported; this dma-ring device reads version 1.");
            }

            var s = new State
            {
                RingAddress = reader.ReadBe64("ring_address"),
                RingSize = reader.ReadBe32("ring_size"),
            };
            byte enabled = reader.ReadU8("enabled");
            s.Consumer = reader.ReadBe32("consumer");
            s.Completed = reader.ReadBe64("completed");
            uint error = reader.ReadBe32("error");
            s.Select = reader.ReadBe32("select");
            reader.ExpectEnd();

            if (enabled > 1)
            {
                throw new DeviceStateException($"Section '{reader.SectionName}': enabled is {enabled}; expected 0 or 1.");
            }

            if (!Enum.IsDefined((DmaRingError)error))
            {
                throw new DeviceStateException($"Section '{reader.SectionName}': error code {error} is unknown (known: 0..{(uint)DmaRingError.BadProducer}).");
            }

            s.Enabled = enabled == 1;
            s.Error = (DmaRingError)error;
            if (s.Enabled)
            {
                CheckRing(reader.SectionName, s);
            }

            lock (device._lock) { device._state = s; }
        }

        private void CheckRing(string section, State s)
        {
            if (device.RingProblem(s.RingAddress, s.RingSize) is { } problem)
            {
                throw new DeviceStateException(
                    $"Section '{section}': the ring is enabled but {problem}. The destination's RAM must match the source's.");
            }

            Span<byte> header = stackalloc byte[HeaderSize];
            device._memory.Read(new GuestPhysicalAddress(s.RingAddress), header);
            uint producer = BinaryPrimitives.ReadUInt32LittleEndian(header[HeaderProducerOffset..]);
            uint pending = producer - s.Consumer;
            if (pending > s.RingSize)
            {
                throw new DeviceStateException(
                    $"Section '{section}': the ring header at 0x{s.RingAddress:x} has producer index {producer}, " +
                    $"{pending} ahead of the device's consumer index {s.Consumer}, more than the ring's {s.RingSize} slots: " +
                    "guest RAM and device state disagree (RAM not migrated, or from another migration).");
            }

            Span<byte> descriptor = stackalloc byte[DescriptorSize];
            for (uint i = s.Consumer; i != producer; i++)
            {
                device._memory.Read(new GuestPhysicalAddress(DescriptorAddress(s.RingAddress, i & (s.RingSize - 1))), descriptor);
                uint status = BinaryPrimitives.ReadUInt32LittleEndian(descriptor[DescStatus..]);
                if ((status & DescStatusDone) != 0)
                {
                    throw new DeviceStateException(
                        $"Section '{section}': descriptor {i} (slot {i & (s.RingSize - 1)}) is still to be processed but already " +
                        $"marked done in guest RAM (status 0x{status:x}): guest RAM and device state disagree.");
                }
            }
        }
    }
}
