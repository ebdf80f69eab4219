using Modular.Abstractions.Memory;
using Modular.Abstractions.Plugins;

namespace Modular.Abstractions.Devices;

/// <summary>
/// A device model plugin: builds devices of one type from their config section. Export it with
/// <see cref="DeviceMetadataAttribute"/>. Shared by every machine in the process: keep no state here.
/// </summary>
public interface IDeviceModelFactory : IProbePlugin
{
    /// <summary>Builds one device.</summary>
    /// <param name="config">The device's config section (id, type and the device's own keys).</param>
    /// <param name="context">What the machine offers the device: guest memory and machine control.</param>
    /// <exception cref="DeviceConfigException">A key is missing or malformed; the message names it.</exception>
    IDeviceModel Create(DeviceConfig config, IDeviceContext context);
}

/// <summary>What a machine offers the devices it contains.</summary>
public interface IDeviceContext
{
    /// <summary>Guest RAM, reached only through copies (DESIGN.md §5).</summary>
    IGuestMemory Memory { get; }

    /// <summary>Asks the machine to stop and the process to exit with <paramref name="exitCode"/> (isa-debug-exit).</summary>
    /// <param name="exitCode">The process exit code the guest chose.</param>
    void RequestExit(int exitCode);
}

/// <summary>A contiguous range of I/O ports, [<paramref name="First"/>, <paramref name="First"/> + <paramref name="Count"/>).</summary>
/// <param name="First">The first port.</param>
/// <param name="Count">How many ports.</param>
public readonly record struct IoPortRange(ushort First, ushort Count)
{
    /// <summary>True when <paramref name="port"/> lies in the range.</summary>
    /// <param name="port">A port number.</param>
    public bool Contains(ushort port) => port >= First && port - First < Count;

    /// <summary>True when the two ranges share a port.</summary>
    /// <param name="other">Another range.</param>
    public bool Overlaps(IoPortRange other) => First < other.First + other.Count && other.First < First + Count;

    /// <summary>Formats as <c>0x3f8-0x3ff</c>.</summary>
    public override string ToString() => $"0x{First:x}-0x{First + Count - 1:x}";
}

/// <summary>A contiguous guest-physical MMIO range.</summary>
/// <param name="Start">The first address.</param>
/// <param name="Length">Length in bytes.</param>
public readonly record struct MmioRange(GuestPhysicalAddress Start, ulong Length)
{
    /// <summary>True when <paramref name="address"/> lies in the range.</summary>
    /// <param name="address">A guest-physical address.</param>
    public bool Contains(GuestPhysicalAddress address) => address.Value >= Start.Value && address.Value - Start.Value < Length;

    /// <summary>True when the two ranges share an address.</summary>
    /// <param name="other">Another range.</param>
    public bool Overlaps(MmioRange other) => Start.Value < other.Start.Value + other.Length && other.Start.Value < Start.Value + Length;

    /// <summary>Formats as <c>0x…-0x…</c>.</summary>
    public override string ToString() => $"{Start}-0x{Start.Value + Length - 1:x}";
}

/// <summary>
/// A device on the machine's port-I/O and MMIO bus. Access methods run on vCPU threads, possibly
/// several at once: the device does its own locking.
/// </summary>
public interface IDeviceModel : IDisposable
{
    /// <summary>The device's id from the config (unique in the machine).</summary>
    string Id { get; }

    /// <summary>The I/O port ranges the device claims.</summary>
    IReadOnlyList<IoPortRange> Ports { get; }

    /// <summary>The MMIO ranges the device claims.</summary>
    IReadOnlyList<MmioRange> Mmio { get; }

    /// <summary>A guest IN from <paramref name="port"/>. vCPU thread.</summary>
    /// <param name="port">The port read.</param>
    /// <param name="data">Receives 1, 2 or 4 bytes.</param>
    void PortRead(ushort port, Span<byte> data);

    /// <summary>A guest OUT to <paramref name="port"/>. vCPU thread.</summary>
    /// <param name="port">The port written.</param>
    /// <param name="data">1, 2 or 4 bytes.</param>
    void PortWrite(ushort port, ReadOnlySpan<byte> data);

    /// <summary>A guest read of MMIO. vCPU thread.</summary>
    /// <param name="address">The address read.</param>
    /// <param name="data">Receives the bytes.</param>
    void MmioRead(GuestPhysicalAddress address, Span<byte> data);

    /// <summary>A guest write of MMIO. vCPU thread.</summary>
    /// <param name="address">The address written.</param>
    /// <param name="data">The bytes.</param>
    void MmioWrite(GuestPhysicalAddress address, ReadOnlySpan<byte> data);

    /// <summary>How the device migrates: a savevm section, or an explicit reason why it cannot.</summary>
    DeviceMigration Migration { get; }
}

/// <summary>
/// A device's migration declaration. There is no silent default: a device either has a savevm
/// section or says why it cannot migrate (which blocks migration of the machine).
/// </summary>
public sealed class DeviceMigration
{
    private DeviceMigration(ISaveVmSection? section, string? unmigratableReason)
    {
        Section = section;
        UnmigratableReason = unmigratableReason;
    }

    /// <summary>The device's savevm section, or null when unmigratable.</summary>
    public ISaveVmSection? Section { get; }

    /// <summary>Why the device cannot migrate, or null when it can.</summary>
    public string? UnmigratableReason { get; }

    /// <summary>The device migrates through <paramref name="section"/>.</summary>
    /// <param name="section">The device's savevm section.</param>
    public static DeviceMigration Migratable(ISaveVmSection section) =>
        new(section ?? throw new ArgumentNullException(nameof(section)), null);

    /// <summary>The device cannot migrate.</summary>
    /// <param name="reason">Why, for the operator (e.g. "host file descriptor passthrough").</param>
    public static DeviceMigration Unmigratable(string reason) =>
        new(null, string.IsNullOrWhiteSpace(reason) ? throw new ArgumentException("A reason is required.", nameof(reason)) : reason);
}

/// <summary>
/// One savevm section, as QEMU's VMStateDescription: an id string, an instance id, the version it
/// writes and the oldest version it can read.
/// </summary>
public interface ISaveVmSection
{
    /// <summary>The section id string in the stream (e.g. <c>serial</c>), at most 255 bytes.</summary>
    string IdString { get; }

    /// <summary>Tells apart several devices with one id string.</summary>
    uint InstanceId { get; }

    /// <summary>The version <see cref="Save"/> writes.</summary>
    uint Version { get; }

    /// <summary>The oldest version <see cref="Load"/> accepts.</summary>
    uint MinimumVersion { get; }

    /// <summary>
    /// Writes the device state. Called with the vCPUs stopped, on the migration thread, and may be
    /// called more than once for one migration (a source rehearses the switch once, with the vCPUs
    /// stopped for a moment, when the migration's setup is done), so it must not change the device.
    /// </summary>
    /// <param name="writer">Receives the state.</param>
    void Save(SaveVmWriter writer);

    /// <summary>
    /// Validates and loads state written by <see cref="Save"/> of <paramref name="version"/>.
    /// On any error throws <see cref="DeviceStateException"/> and leaves the device unchanged.
    /// Called on the destination's main incoming thread with the vCPUs stopped; may touch guest RAM
    /// (through <see cref="IGuestMemory"/>), which during postcopy may fault and wait for the page.
    /// </summary>
    /// <param name="reader">The state bytes.</param>
    /// <param name="version">The version found in the stream, between <see cref="MinimumVersion"/> and <see cref="Version"/>.</param>
    void Load(SaveVmReader reader, uint version);
}

/// <summary>A device's config section: its id, type and its own keys.</summary>
/// <param name="Id">The device id (unique in the machine).</param>
/// <param name="Type">The device type, selecting the factory.</param>
/// <param name="Path">The JSON path of the section (e.g. <c>devices[0]</c>) for error messages.</param>
/// <param name="Properties">The device's own keys with their values as strings.</param>
public sealed record DeviceConfig(string Id, string Type, string Path, IReadOnlyDictionary<string, string> Properties)
{
    /// <summary>The value of <paramref name="key"/>, or <paramref name="defaultValue"/> when absent.</summary>
    /// <param name="key">The key.</param>
    /// <param name="defaultValue">Used when the key is absent.</param>
    public string GetString(string key, string defaultValue) =>
        Properties.TryGetValue(key, out string? value) ? value : defaultValue;

    /// <summary>The value of <paramref name="key"/> as an unsigned integer (decimal or 0x hex).</summary>
    /// <param name="key">The key.</param>
    /// <param name="defaultValue">Used when the key is absent.</param>
    /// <exception cref="DeviceConfigException">The value is not a number.</exception>
    public ulong GetUInt64(string key, ulong defaultValue)
    {
        if (!Properties.TryGetValue(key, out string? text))
        {
            return defaultValue;
        }

        bool ok = text.StartsWith("0x", StringComparison.OrdinalIgnoreCase)
            ? ulong.TryParse(text.AsSpan(2), System.Globalization.NumberStyles.HexNumber, System.Globalization.CultureInfo.InvariantCulture, out ulong value)
            : ulong.TryParse(text, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out value);
        return ok ? value : throw new DeviceConfigException(
            $"{Path}.{key}: expected a number (decimal or 0x hex), found '{text}'.");
    }
}

/// <summary>A device's config is wrong. The message names the JSON path and what was expected.</summary>
public class DeviceConfigException : Exception
{
    /// <summary>Creates the exception.</summary>
    public DeviceConfigException() { }

    /// <summary>Creates the exception with a message.</summary>
    /// <param name="message">Names the JSON path and what was expected.</param>
    public DeviceConfigException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and cause.</summary>
    /// <param name="message">Names the JSON path and what was expected.</param>
    /// <param name="innerException">The cause.</param>
    public DeviceConfigException(string message, Exception innerException) : base(message, innerException) { }
}

/// <summary>Device state could not be loaded. The message names the section and what was wrong.</summary>
public class DeviceStateException : Exception
{
    /// <summary>Creates the exception.</summary>
    public DeviceStateException() { }

    /// <summary>Creates the exception with a message.</summary>
    /// <param name="message">Names the section, the offset and what was wrong.</param>
    public DeviceStateException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and cause.</summary>
    /// <param name="message">Names the section, the offset and what was wrong.</param>
    /// <param name="innerException">The cause.</param>
    public DeviceStateException(string message, Exception innerException) : base(message, innerException) { }
}
