using Modular.Abstractions.Devices;

namespace Modular.Devices.Serial;

public sealed partial class SerialDevice
{
    /// <summary>The savevm section id string.</summary>
    public const string SectionIdString = "serial";

    /// <summary>
    /// Section <c>serial</c> version 1, 11 bytes: u8 rbr, u8 ier, u8 fcr, u8 lcr, u8 mcr, u8 lsr,
    /// u8 msr, u8 scr, be16 divisor, u8 thr_interrupt_pending (0 or 1). IIR is derived (from IER, LSR,
    /// FCR and the pending flag) and so not stored; MSR is stored, and checked against MCR on load.
    /// </summary>
    private sealed class Section(SerialDevice device, uint instanceId) : ISaveVmSection
    {
        public string IdString => SectionIdString;

        public uint InstanceId => instanceId;

        public uint Version => 1;

        public uint MinimumVersion => 1;

        /// <summary>Migration thread, vCPUs stopped.</summary>
        public void Save(SaveVmWriter writer)
        {
            UartRegisters r;
            lock (device._lock) { r = device._regs; }

            writer.WriteU8(r.Rbr);
            writer.WriteU8(r.Ier);
            writer.WriteU8(r.Fcr);
            writer.WriteU8(r.Lcr);
            writer.WriteU8(r.Mcr);
            writer.WriteU8(r.Lsr);
            writer.WriteU8(r.Msr);
            writer.WriteU8(r.Scr);
            writer.WriteBe16(r.Divisor);
            writer.WriteU8(r.ThrInterruptPending ? (byte)1 : (byte)0);
        }

        /// <summary>Main incoming thread, vCPUs stopped. Parses and validates everything before changing the device.</summary>
        public void Load(SaveVmReader reader, uint version)
        {
            if (version != 1)
            {
                throw new DeviceStateException(
                    $"Section '{reader.SectionName}': version {version} is not supported; this serial device reads version 1.");
            }

            var r = new UartRegisters
            {
                Rbr = reader.ReadU8("rbr"),
                Ier = Check(reader, reader.ReadU8("ier"), UartRegisters.IerWritable, "ier"),
                Fcr = Check(reader, reader.ReadU8("fcr"), UartRegisters.FcrStored, "fcr"),
                Lcr = reader.ReadU8("lcr"),
                Mcr = Check(reader, reader.ReadU8("mcr"), UartRegisters.McrWritable, "mcr"),
                Lsr = Check(reader, reader.ReadU8("lsr"), UartRegisters.LsrPossible, "lsr"),
            };
            byte msr = reader.ReadU8("msr");
            r.Scr = reader.ReadU8("scr");
            r.Divisor = reader.ReadBe16("divisor");
            byte pending = reader.ReadU8("thr_interrupt_pending");
            reader.ExpectEnd();

            const byte thrEmpty = UartRegisters.LsrThrEmpty | UartRegisters.LsrTransmitterEmpty;
            if ((r.Lsr & thrEmpty) != thrEmpty)
            {
                throw new DeviceStateException(
                    $"Section '{reader.SectionName}': lsr 0x{r.Lsr:x2} says the transmitter is busy, which this device never is (THR empty bits 0x60 must be set).");
            }

            if (msr != r.Msr)
            {
                throw new DeviceStateException(
                    $"Section '{reader.SectionName}': msr 0x{msr:x2} does not match mcr 0x{r.Mcr:x2} (expected msr 0x{r.Msr:x2}).");
            }

            if (pending > 1)
            {
                throw new DeviceStateException(
                    $"Section '{reader.SectionName}': thr_interrupt_pending is {pending}; expected 0 or 1.");
            }

            r.ThrInterruptPending = pending == 1;
            lock (device._lock) { device._regs = r; }
        }

        private static byte Check(SaveVmReader reader, byte value, byte allowed, string name) =>
            (value & ~allowed) == 0 ? value : throw new DeviceStateException(
                $"Section '{reader.SectionName}': {name} 0x{value:x2} sets reserved bits 0x{value & ~allowed & 0xff:x2}; the state is corrupt or from an incompatible device.");
    }
}
