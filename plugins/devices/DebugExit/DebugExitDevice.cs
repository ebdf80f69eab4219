using System.Buffers.Binary;
using Modular.Abstractions.Devices;
using Modular.Abstractions.Memory;

namespace Modular.Devices.DebugExit;

/// <summary>
/// isa-debug-exit: a guest write of value v (1, 2 or 4 bytes, little-endian) asks the machine to exit
/// with code <c>(v &lt;&lt; 1) | 1</c>, as QEMU does, so a test guest can report pass/fail. Reads return 0.
/// </summary>
public sealed class DebugExitDevice : IDeviceModel
{
    /// <summary>The savevm section id string.</summary>
    public const string SectionIdString = "debug-exit";

    private readonly IDeviceContext _context;

    internal DebugExitDevice(string id, IoPortRange ports, uint instanceId, IDeviceContext context)
    {
        Id = id;
        Ports = [ports];
        _context = context;
        Migration = DeviceMigration.Migratable(new Section(instanceId));
    }

    /// <inheritdoc />
    public string Id { get; }

    /// <inheritdoc />
    public IReadOnlyList<IoPortRange> Ports { get; }

    /// <inheritdoc />
    public IReadOnlyList<MmioRange> Mmio { get; } = [];

    /// <inheritdoc />
    public DeviceMigration Migration { get; }

    /// <summary>The exit code a write of <paramref name="value"/> requests: <c>(value &lt;&lt; 1) | 1</c>, truncated to 32 bits.</summary>
    public static int ExitCodeFor(uint value) => unchecked((int)((value << 1) | 1));

    /// <summary>Reads return 0. vCPU thread.</summary>
    public void PortRead(ushort port, Span<byte> data) => data.Clear();

    /// <summary>Requests the exit. vCPU thread; the machine decides how it stops.</summary>
    public void PortWrite(ushort port, ReadOnlySpan<byte> data)
    {
        Span<byte> value = stackalloc byte[4];
        data[..Math.Min(data.Length, 4)].CopyTo(value);
        _context.RequestExit(ExitCodeFor(BinaryPrimitives.ReadUInt32LittleEndian(value)));
    }

    /// <summary>No MMIO; reads return 0xff.</summary>
    public void MmioRead(GuestPhysicalAddress address, Span<byte> data) => data.Fill(0xff);

    /// <summary>No MMIO; writes are ignored.</summary>
    public void MmioWrite(GuestPhysicalAddress address, ReadOnlySpan<byte> data) { }

    /// <inheritdoc />
    public void Dispose() { }

    /// <summary>
    /// Section <c>debug-exit</c> version 1 with an empty body. The device has no state: a write
    /// exits at once and nothing is left behind. It still has a versioned section rather than none,
    /// so that the machine migrates with it, the destination checks a matching device exists, and a
    /// later version can add fields.
    /// </summary>
    private sealed class Section(uint instanceId) : ISaveVmSection
    {
        public string IdString => SectionIdString;

        public uint InstanceId => instanceId;

        public uint Version => 1;

        public uint MinimumVersion => 1;

        public void Save(SaveVmWriter writer)
        {
            // Intentionally empty: version 1 has no fields (see the class comment).
        }

        public void Load(SaveVmReader reader, uint version)
        {
            if (version != 1)
            {
                throw new DeviceStateException(
                    $"Section '{reader.SectionName}': version {version} is not supported; this debug-exit device reads version 1.");
            }

            reader.ExpectEnd();
        }
    }
}
