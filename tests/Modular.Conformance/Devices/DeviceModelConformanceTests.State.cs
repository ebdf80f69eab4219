using System.Reflection;
using System.Text;
using Modular.Abstractions.Devices;
using Modular.Abstractions.Memory;

namespace Modular.Conformance.Devices;

public abstract partial class DeviceModelConformanceTests
{
    /// <summary>
    /// The device either has a well-formed savevm section whose Save writes its state (the same bytes
    /// every time), or declares itself unmigratable with a reason: never silently nothing.
    /// </summary>
    [TestMethod]
    public void DeclaresHowItMigrates()
    {
        using DeviceUnderTest fresh = CreateDevice();
        DeviceMigration migration = fresh.Device.Migration
            ?? throw new AssertFailedException($"{DeviceType}: Migration is null; return DeviceMigration.Migratable(section) or DeviceMigration.Unmigratable(reason).");
        if (migration.Section is not { } section)
        {
            Expect.That(!(string.IsNullOrWhiteSpace(migration.UnmigratableReason)), $"{DeviceType}: an unmigratable device must say why.");
            Console.WriteLine($"{DeviceType} is unmigratable: {migration.UnmigratableReason}");
            return;
        }

        Expect.That(!(string.IsNullOrEmpty(section.IdString)), $"{DeviceType}: the savevm section has an empty IdString; name it (e.g. the device type).");
        Expect.That(Encoding.UTF8.GetByteCount(section.IdString) <= 255, $"{DeviceType}: the section id '{section.IdString}' is longer than 255 UTF-8 bytes, the stream's limit.");
        Expect.That(section.MinimumVersion <= section.Version,
            $"{DeviceType}: section '{section.IdString}' has MinimumVersion {section.MinimumVersion} above its Version {section.Version}: it could not read its own state.");

        byte[] freshState = Save(fresh.Device);
        Expect.That(freshState.AsSpan().SequenceEqual(Save(fresh.Device)),
            $"{DeviceType}: saving the same device twice gave different bytes; Save must be deterministic (no clocks, no random, no unordered hash sets).");
        using DeviceUnderTest driven = CreateDrivenDevice();
        byte[] state = Save(driven.Device);
        if (StatelessByDesign is { } why)
        {
            Expect.That(state.Length + freshState.Length == 0,
                $"{DeviceType}: StatelessByDesign says '{why}', but section '{section.IdString}' saves {Math.Max(state.Length, freshState.Length)} bytes. Remove the override.");
            Console.WriteLine($"{DeviceType} is stateless by design: {why}");
            return;
        }

        Expect.That(!Equals(0, state.Length),
            $"{DeviceType}: section '{section.IdString}' version {section.Version} saves zero bytes. A device with state must save it; a device that cannot migrate " +
            "must return DeviceMigration.Unmigratable(reason); a device with truly no state must say so by overriding StatelessByDesign in its conformance test.");
        Expect.That(!(state.AsSpan().SequenceEqual(freshState)),
            $"{DeviceType}: after DriveToNonDefaultState the device saves the same {state.Length} bytes as a fresh device, so the round trip would prove nothing. " +
            "Make DriveToNonDefaultState change the registers the device saves (or Save is not saving them).");
    }

    /// <summary>Save, then Load into a fresh device (on a copy of the guest RAM, as RAM migrates separately), gives an equal device.</summary>
    [TestMethod]
    public void SaveThenLoadIntoAFreshDeviceGivesAnEqualDevice()
    {
        using DeviceUnderTest source = CreateDrivenDevice();
        byte[] state = Save(source.Device);
        using DeviceUnderTest destination = CreateDevice(CopyOfRam(source));
        try
        {
            Load(destination.Device, state);
        }
        catch (Exception ex)
        {
            throw new AssertFailedException($"{DeviceType}: loading the state a driven device saved into a fresh device threw {ex.GetType().Name}: {ex.Message}");
        }

        byte[] loaded = Save(destination.Device);
        Expect.That(state.AsSpan().SequenceEqual(loaded),
            $"{DeviceType}: after loading the source's state, the destination saves different bytes ({FirstDifference(state, loaded)}). " +
            "Load does not restore everything Save writes, or Save writes something Load ignores.");
    }

    /// <summary>Every truncation of a valid state is refused with DeviceStateException and leaves the device (and guest RAM) unchanged.</summary>
    [TestMethod]
    public void TruncatedStateIsRefusedAndLeavesTheDeviceUnchanged()
    {
        using DeviceUnderTest source = CreateDrivenDevice();
        byte[] state = Save(source.Device);
        if (state.Length == 0)
        {
            Assert.Inconclusive($"{DeviceType} saves no bytes ({StatelessByDesign ?? "see DeclaresHowItMigrates"}): there is nothing to truncate.");
        }

        foreach (int length in Sample(state.Length))
        {
            using DeviceUnderTest destination = CreateDevice(CopyOfRam(source));
            AssertRefusedAndUnchanged(destination, state[..length], $"the state truncated to {length} of {state.Length} bytes");
        }
    }

    /// <summary>A valid state followed by an extra byte is refused: the writer and the reader disagree (call reader.ExpectEnd()).</summary>
    [TestMethod]
    public void TrailingBytesAreRefusedAndLeaveTheDeviceUnchanged()
    {
        using DeviceUnderTest source = CreateDrivenDevice();
        byte[] state = Save(source.Device);
        using DeviceUnderTest destination = CreateDevice(CopyOfRam(source));
        AssertRefusedAndUnchanged(destination, [.. state, 0x5a], $"the {state.Length}-byte state followed by one extra byte (call reader.ExpectEnd())");
    }

    /// <summary>
    /// Corrupted states (each sampled byte inverted, its top bit or its low bit flipped) are either
    /// loaded or refused with DeviceStateException leaving the device unchanged; never another
    /// exception, never half loaded. The author's <see cref="InvalidStates"/> must all be refused.
    /// </summary>
    [TestMethod]
    public void GarbledStateIsRefusedCleanlyOrLoaded()
    {
        using DeviceUnderTest source = CreateDrivenDevice();
        byte[] state = Save(source.Device);
        foreach ((string what, byte[] invalid) in InvalidStates(state))
        {
            using DeviceUnderTest destination = CreateDevice(CopyOfRam(source));
            AssertRefusedAndUnchanged(destination, invalid, what);
        }

        if (state.Length == 0)
        {
            Assert.Inconclusive($"{DeviceType} saves no bytes ({StatelessByDesign ?? "see DeclaresHowItMigrates"}): there is nothing to garble.");
        }

        int refused = 0, loaded = 0;
        foreach (int offset in Sample(state.Length))
        {
            foreach (byte mask in new byte[] { 0xff, 0x80, 0x01 })
            {
                byte[] garbled = (byte[])state.Clone();
                garbled[offset] ^= mask;
                using DeviceUnderTest destination = CreateDevice(CopyOfRam(source));
                byte[] before = Save(destination.Device);
                long writes = destination.Memory.Writes;
                try
                {
                    Load(destination.Device, garbled);
                    loaded++;
                    continue;
                }
                catch (DeviceStateException)
                {
                    refused++;
                }
                catch (Exception ex)
                {
                    throw new AssertFailedException(
                        $"{DeviceType}: loading the state with byte {offset} xor 0x{mask:x2} threw {ex.GetType().FullName} ('{ex.Message}'). Load must validate " +
                        "what it reads and throw DeviceStateException naming the section and the field.");
                }

                byte[] after = Save(destination.Device);
                Expect.That(before.AsSpan().SequenceEqual(after),
                    $"{DeviceType}: Load refused the state with byte {offset} xor 0x{mask:x2}, but the device changed ({FirstDifference(before, after)}). " +
                    "Load must validate everything first, then change the device.");
                Expect.Equal(writes, destination.Memory.Writes, $"{DeviceType}: a refused load (byte {offset} xor 0x{mask:x2}) wrote guest memory.");
            }
        }

        Console.WriteLine($"{DeviceType}: of {refused + loaded} corrupted states, {refused} were refused cleanly and {loaded} were valid states.");
    }

    /// <summary>A state of a newer version than the device writes (or older than it reads) is refused naming the version, leaving the device unchanged.</summary>
    [TestMethod]
    public void TooNewStateIsRefusedAndLeavesTheDeviceUnchanged()
    {
        using DeviceUnderTest source = CreateDrivenDevice();
        ISaveVmSection section = MigratableSection(source.Device);
        byte[] state = Save(source.Device);
        using DeviceUnderTest destination = CreateDevice(CopyOfRam(source));
        uint newer = section.Version + 1;
        AssertRefusedAndUnchanged(destination, state, $"a state of version {newer} (this device writes version {section.Version})", newer, $"version {newer}");
        if (section.MinimumVersion > 0)
        {
            uint older = section.MinimumVersion - 1;
            AssertRefusedAndUnchanged(destination, state, $"a state of version {older} (this device reads version {section.MinimumVersion} and up)", older, $"version {older}");
        }
    }

    /// <summary>
    /// What the suite can see of guest memory use: the device stays inside guest RAM, Save writes no
    /// guest memory (pages dirtied after the last RAM pass would be lost), and the device object holds
    /// no native pointers. The suite only observes calls to the guest-memory API: it cannot prove that
    /// a device never reaches guest RAM some other way, which is why the API only ever copies.
    /// </summary>
    [TestMethod]
    public void GuestMemoryIsTouchedOnlyThroughTheGuestMemoryApi()
    {
        using DeviceUnderTest source = CreateDrivenDevice();
        Expect.That(source.Memory.Outside == 0,
            $"{DeviceType}: while being driven, the device accessed guest memory outside guest RAM {source.Memory.Outside} time(s); check addresses the guest gives with IGuestMemory.Contains first.");
        if (source.Device.Migration?.Section is not null)
        {
            long writes = source.Memory.Writes;
            Save(source.Device);
            Expect.Equal(writes, source.Memory.Writes,
                $"{DeviceType}: Save wrote guest memory {source.Memory.Writes - writes} time(s). Save runs after the last RAM pass: pages it dirties would never reach the destination.");
        }

        string? pointer = FindNativePointer(source.Device);
        Expect.That(pointer is null,
            $"{DeviceType}: {pointer} holds a native pointer. A device must not keep pointers into guest RAM: copy through IGuestMemory.Read/Write (DESIGN.md §5). " +
            "If this field is not about guest RAM, allow it by overriding IsAllowedNativeField.");
    }

    /// <summary>True when <paramref name="field"/> may hold a native pointer (it is not about guest RAM).</summary>
    /// <param name="field">A field of the device or of an object it holds.</param>
    protected virtual bool IsAllowedNativeField(FieldInfo field) => false;

    private string? FindNativePointer(object device)
    {
        Assembly own = device.GetType().Assembly;
        var seen = new HashSet<object>(ReferenceEqualityComparer.Instance);
        var pending = new Stack<(object Value, int Depth)>();
        pending.Push((device, 0));
        while (pending.Count > 0)
        {
            (object value, int depth) = pending.Pop();
            if (!seen.Add(value) || depth > 6)
            {
                continue;
            }

            for (Type? type = value.GetType(); type is not null && type.Assembly == own; type = type.BaseType)
            {
                foreach (FieldInfo field in type.GetFields(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly))
                {
                    Type t = field.FieldType;
                    if ((t.IsPointer || t.IsFunctionPointer || t == typeof(nint) || t == typeof(nuint) || t == typeof(System.Buffers.MemoryHandle))
                        && !IsAllowedNativeField(field))
                    {
                        return $"field {type.Name}.{field.Name} ({t.Name})";
                    }

                    if (!t.IsPointer && field.GetValue(value) is { } child && child.GetType().Assembly == own)
                    {
                        pending.Push((child, depth + 1));
                    }
                }
            }
        }

        return null;
    }

    private IGuestMemory CopyOfRam(DeviceUnderTest source)
    {
        IGuestMemory copy = CreateGuestMemory();
        IGuestMemory from = source.Memory.Inner;
        byte[] chunk = new byte[64 * 1024];
        for (ulong at = 0; at < from.Size; at += (ulong)chunk.Length)
        {
            int n = (int)Math.Min((ulong)chunk.Length, from.Size - at);
            from.Read(new GuestPhysicalAddress(at), chunk.AsSpan(0, n));
            copy.Write(new GuestPhysicalAddress(at), chunk.AsSpan(0, n));
        }

        return copy;
    }

    private IEnumerable<int> Sample(int length)
    {
        if (length <= MaxMutations)
        {
            return Enumerable.Range(0, length);
        }

        return Enumerable.Range(0, MaxMutations).Select(i => (int)((long)i * (length - 1) / (MaxMutations - 1))).Distinct();
    }
}
