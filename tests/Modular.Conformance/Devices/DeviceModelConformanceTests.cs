using Modular.Abstractions.Devices;
using Modular.Abstractions.Memory;
using Modular.Abstractions.Plugins;

namespace Modular.Conformance.Devices;

/// <summary>
/// The conformance suite for a device model plugin: its savevm section behaves as the migration
/// engine assumes. Subclass it in your test project, mark the subclass <c>[TestClass]</c>, and supply
/// <see cref="Factory"/> and <see cref="DriveToNonDefaultState"/> (play the guest: program the device
/// so that every field it saves differs from a fresh device). Equal devices are devices whose
/// <c>Save</c> writes identical bytes.
/// </summary>
public abstract partial class DeviceModelConformanceTests
{
    /// <summary>The device model factory under test.</summary>
    protected abstract IDeviceModelFactory Factory { get; }

    /// <summary>The config section each device is built from. Default: id <c>TYPE0</c>, the factory's device type, no keys.</summary>
    protected virtual DeviceConfig Config => new(DeviceType + "0", DeviceType, "devices[0]", new Dictionary<string, string>());

    /// <summary>The device type: the factory's <see cref="DeviceMetadataAttribute"/>.</summary>
    protected string DeviceType =>
        Factory.GetType().GetCustomAttributes(typeof(DeviceMetadataAttribute), false).OfType<DeviceMetadataAttribute>().FirstOrDefault()?.Type
        ?? Factory.GetType().Name;

    /// <summary>The guest RAM each device gets (the suite wraps it to record the device's accesses). Default: 1 MiB in an array.</summary>
    protected virtual IGuestMemory CreateGuestMemory() => new ArrayGuestMemory(1 << 20);

    /// <summary>
    /// Plays the guest: programs <paramref name="device"/> (port and MMIO accesses, guest RAM contents
    /// through <paramref name="ram"/>) so that its saved state differs from a fresh device's.
    /// </summary>
    /// <param name="device">A fresh device.</param>
    /// <param name="ram">The device's guest RAM, for the test's own setup (the guest's writes).</param>
    protected abstract void DriveToNonDefaultState(IDeviceModel device, IGuestMemory ram);

    /// <summary>
    /// Null for a device that has state. A device whose savevm section writes zero bytes must say why
    /// here (for example "isa-debug-exit has no registers"); otherwise the suite fails it, because a
    /// device that saves nothing usually forgot to.
    /// </summary>
    protected virtual string? StatelessByDesign => null;

    /// <summary>
    /// States the device must refuse, beyond what the suite derives (truncated, trailing, too new):
    /// each with what is wrong, built from <paramref name="validState"/> (a state saved by a driven device).
    /// </summary>
    /// <param name="validState">A valid saved state.</param>
    protected virtual IEnumerable<(string What, byte[] State)> InvalidStates(byte[] validState) => [];

    /// <summary>How many truncations and single-byte corruptions the suite tries at most.</summary>
    protected virtual int MaxMutations => 256;

    /// <summary>The device: a fresh one on fresh RAM, with its recorded memory and context.</summary>
    protected sealed record DeviceUnderTest(IDeviceModel Device, RecordingGuestMemory Memory, ConformanceDeviceContext Context) : IDisposable
    {
        /// <summary>Disposes the device.</summary>
        public void Dispose() => Device.Dispose();
    }

    /// <summary>Builds a fresh device on <paramref name="ram"/> (fresh RAM when null).</summary>
    protected DeviceUnderTest CreateDevice(IGuestMemory? ram = null)
    {
        var memory = new RecordingGuestMemory(ram ?? CreateGuestMemory());
        var context = new ConformanceDeviceContext(memory);
        IDeviceModel device = Factory.Create(Config, context)
            ?? throw new AssertFailedException($"{DeviceType}: the factory's Create returned null.");
        return new DeviceUnderTest(device, memory, context);
    }

    /// <summary>A fresh device driven into a non-default state.</summary>
    protected DeviceUnderTest CreateDrivenDevice()
    {
        DeviceUnderTest source = CreateDevice();
        DriveToNonDefaultState(source.Device, source.Memory.Inner);
        return source;
    }

    /// <summary>The device's section, or inconclusive when it declares itself unmigratable.</summary>
    protected ISaveVmSection MigratableSection(IDeviceModel device)
    {
        DeviceMigration migration = device.Migration
            ?? throw new AssertFailedException($"{DeviceType}: Migration is null; return DeviceMigration.Migratable(section) or DeviceMigration.Unmigratable(reason).");
        if (migration.Section is null)
        {
            Assert.Inconclusive($"{DeviceType} declares itself unmigratable ({migration.UnmigratableReason}), so there is no state to check.");
        }

        return migration.Section!;
    }

    /// <summary>The bytes the device's section saves.</summary>
    protected byte[] Save(IDeviceModel device)
    {
        var writer = new SaveVmWriter();
        MigratableSection(device).Save(writer);
        return writer.ToArray();
    }

    /// <summary>Loads <paramref name="state"/> as <paramref name="version"/> (default: the section's version).</summary>
    protected void Load(IDeviceModel device, byte[] state, uint? version = null)
    {
        ISaveVmSection section = MigratableSection(device);
        section.Load(new SaveVmReader(state, SectionName(section)), version ?? section.Version);
    }

    /// <summary>The name the engine gives the section in errors: <c>id/instance</c>.</summary>
    protected static string SectionName(ISaveVmSection section) => $"{section.IdString}/{section.InstanceId}";

    /// <summary>Where two states first differ, in words.</summary>
    protected static string FirstDifference(byte[] expected, byte[] actual)
    {
        int at = expected.AsSpan().CommonPrefixLength(actual);
        if (expected.Length == actual.Length && at == expected.Length)
        {
            return "identical";
        }

        if (expected.Length != actual.Length && at == Math.Min(expected.Length, actual.Length))
        {
            return $"{expected.Length} bytes expected, {actual.Length} saved";
        }

        return $"byte {at} is 0x{actual[at]:x2}, expected 0x{expected[at]:x2} ({expected.Length} bytes)";
    }

    /// <summary>Loads a state that must be refused; checks the error and that the device and guest RAM are unchanged.</summary>
    /// <param name="destination">A device to load into.</param>
    /// <param name="state">The bad state.</param>
    /// <param name="what">What is wrong with it, for the message.</param>
    /// <param name="version">The version to load it as.</param>
    /// <param name="mustMention">Text the error must contain (besides the section id), if any.</param>
    protected void AssertRefusedAndUnchanged(DeviceUnderTest destination, byte[] state, string what, uint? version = null, string? mustMention = null)
    {
        ISaveVmSection section = MigratableSection(destination.Device);
        byte[] before = Save(destination.Device);
        long writesBefore = destination.Memory.Writes;
        DeviceStateException? refused = null;
        try
        {
            Load(destination.Device, state, version);
        }
        catch (DeviceStateException ex)
        {
            refused = ex;
        }
        catch (Exception ex)
        {
            throw new AssertFailedException(
                $"{DeviceType}: loading {what} threw {ex.GetType().FullName} ('{ex.Message}'). Load must validate what it reads and throw DeviceStateException " +
                "naming the section and the field, so the operator learns which device's state was bad.");
        }

        if (refused is null)
        {
            throw new AssertFailedException($"{DeviceType}: loading {what} succeeded; Load must refuse it with DeviceStateException.");
        }

        Expect.That(refused.Message.Contains(section.IdString, StringComparison.Ordinal),
            $"{DeviceType}: the error for {what} ('{refused.Message}') does not name the section '{SectionName(section)}' (use reader.SectionName).");
        if (mustMention is not null)
        {
            Expect.That(refused.Message.Contains(mustMention, StringComparison.Ordinal),
                $"{DeviceType}: the error for {what} ('{refused.Message}') does not mention '{mustMention}'.");
        }

        byte[] after = Save(destination.Device);
        Expect.That(before.AsSpan().SequenceEqual(after),
            $"{DeviceType}: Load refused {what}, but the device changed ({FirstDifference(before, after)}). Load must parse and validate everything first, " +
            "then change the device, so a refused state leaves it as it was.");
        Expect.Equal(writesBefore, destination.Memory.Writes,
            $"{DeviceType}: Load refused {what}, but wrote guest memory {destination.Memory.Writes - writesBefore} time(s) first; a refused load must leave guest RAM unchanged too.");
    }

}
