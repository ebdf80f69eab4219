using Modular.Abstractions.Devices;
using Modular.Abstractions.Memory;
using Modular.Abstractions.Plugins;

namespace Modular.Conformance.Tests.Devices;

/// <summary>What a <see cref="LatchDevice"/> gets wrong on purpose.</summary>
internal enum DeviceFlaw
{
    None = 0,
    LoadMutatesBeforeValidating,
    SavesNothing,
    LoadForgetsARegister,
    LoadThrowsTheWrongException,
    AcceptsANewerVersion,
    IgnoresTrailingBytes,
    HoldsAGuestRamPointer,
    SaveWritesGuestMemory,
}

/// <summary>
/// <c>latch</c>: four byte registers at ports 0x100-0x103; register 3 is 7 bits wide. Section
/// <c>latch</c> version 2 (reads 1 and 2): the four registers. Correct unless given a <see cref="DeviceFlaw"/>.
/// </summary>
[DeviceMetadata("latch")]
internal sealed class LatchFactory(DeviceFlaw flaw = DeviceFlaw.None) : IDeviceModelFactory
{
    public PluginAvailability Probe() => PluginAvailability.Usable;

    public IDeviceModel Create(DeviceConfig config, IDeviceContext context) => new LatchDevice(config.Id, context.Memory, flaw);
}

internal sealed class LatchDevice : IDeviceModel
{
    private readonly byte[] _registers = new byte[4];
    private readonly IGuestMemory _memory;
    private readonly DeviceFlaw _flaw;
    private readonly RamWindow? _window;

    public LatchDevice(string id, IGuestMemory memory, DeviceFlaw flaw)
    {
        Id = id;
        _memory = memory;
        _flaw = flaw;
        _window = flaw == DeviceFlaw.HoldsAGuestRamPointer ? new RamWindow(0x1000) : null;
        Migration = DeviceMigration.Migratable(new Section(this));
    }

    public string Id { get; }

    public IReadOnlyList<IoPortRange> Ports => [new IoPortRange(0x100, 4)];

    public IReadOnlyList<MmioRange> Mmio => [];

    public DeviceMigration Migration { get; }

    public void PortRead(ushort port, Span<byte> data) => data[0] = _registers[port - 0x100];

    public void PortWrite(ushort port, ReadOnlySpan<byte> data) => _registers[port - 0x100] = port == 0x103 ? (byte)(data[0] & 0x7f) : data[0];

    public void MmioRead(GuestPhysicalAddress address, Span<byte> data) => data.Clear();

    public void MmioWrite(GuestPhysicalAddress address, ReadOnlySpan<byte> data) { }

    public void Dispose() => GC.KeepAlive(_window);

    /// <summary>The flaw under test: an object holding a pointer into guest RAM.</summary>
    private sealed class RamWindow(nint start)
    {
        public nint Start { get; } = start;
    }

    private sealed class Section(LatchDevice device) : ISaveVmSection
    {
        public string IdString => "latch";

        public uint InstanceId => 0;

        public uint Version => 2;

        public uint MinimumVersion => 1;

        public void Save(SaveVmWriter writer)
        {
            if (device._flaw == DeviceFlaw.SaveWritesGuestMemory)
            {
                device._memory.Write(new GuestPhysicalAddress(0), [1]);
            }

            if (device._flaw != DeviceFlaw.SavesNothing)
            {
                writer.WriteBytes(device._registers);
            }
        }

        public void Load(SaveVmReader reader, uint version)
        {
            if (device._flaw != DeviceFlaw.AcceptsANewerVersion && (version < MinimumVersion || version > Version))
            {
                throw new DeviceStateException($"Section '{reader.SectionName}': version {version} is not supported; latch reads versions 1 to 2.");
            }

            if (device._flaw == DeviceFlaw.SavesNothing)
            {
                reader.ExpectEnd();
                return;
            }

            if (device._flaw == DeviceFlaw.LoadThrowsTheWrongException)
            {
                byte[] raw = reader.ReadBytes(reader.Remaining).ToArray();
                byte[] copy = [raw[0], raw[1], raw[2], raw[3]];
                copy.CopyTo(device._registers);
                return;
            }

            byte[] loaded = new byte[4];
            for (int i = 0; i < 4; i++)
            {
                loaded[i] = reader.ReadU8($"r{i}");
                if (device._flaw == DeviceFlaw.LoadMutatesBeforeValidating)
                {
                    device._registers[i] = loaded[i];
                }
            }

            if (device._flaw != DeviceFlaw.IgnoresTrailingBytes)
            {
                reader.ExpectEnd();
            }

            if (loaded[3] > 0x7f)
            {
                throw new DeviceStateException($"Section '{reader.SectionName}': r3 is 0x{loaded[3]:x2}, but the register is 7 bits wide.");
            }

            for (int i = 0; i < 4; i++)
            {
                if (!(device._flaw == DeviceFlaw.LoadForgetsARegister && i == 2))
                {
                    device._registers[i] = loaded[i];
                }
            }
        }
    }
}
