using Modular.Abstractions.Devices;
using Modular.Abstractions.Memory;
using Modular.Conformance.Devices;

namespace Modular.Conformance.Tests.Devices;

/// <summary>The kit against the correct latch device: every test must pass (the control).</summary>
[TestClass]
public sealed class LatchDevicePassesTheKit : DeviceModelConformanceTests
{
    protected override IDeviceModelFactory Factory { get; } = new LatchFactory();

    protected override void DriveToNonDefaultState(IDeviceModel device, IGuestMemory ram) => LatchDriving.Drive(device);
}

internal static class LatchDriving
{
    public static void Drive(IDeviceModel device)
    {
        for (ushort i = 0; i < 4; i++)
        {
            device.PortWrite((ushort)(0x100 + i), [(byte)(0x11 * (i + 1))]);
        }
    }
}

/// <summary>The kit against a flawed latch; not a test class: its tests are run one by one.</summary>
#pragma warning disable MSTEST0030 // Deliberately not a [TestClass]: BrokenDeviceTests runs its methods and expects them to fail.
internal sealed class FlawedDeviceKit(DeviceFlaw flaw) : DeviceModelConformanceTests
#pragma warning restore MSTEST0030
{
    protected override IDeviceModelFactory Factory { get; } = new LatchFactory(flaw);

    protected override void DriveToNonDefaultState(IDeviceModel device, IGuestMemory ram) => LatchDriving.Drive(device);
}

/// <summary>The kit fails each deliberately broken device, with a message that says what is wrong.</summary>
[TestClass]
public sealed class BrokenDeviceTests
{
    private static string KitFails(DeviceFlaw flaw, Action<FlawedDeviceKit> test)
    {
        AssertFailedException failure = Assert.ThrowsExactly<AssertFailedException>(() => test(new FlawedDeviceKit(flaw)));
        Console.WriteLine(failure.Message);
        return failure.Message;
    }

    [TestMethod]
    public void ALoadThatChangesTheDeviceBeforeValidatingFails()
    {
        string message = KitFails(DeviceFlaw.LoadMutatesBeforeValidating, kit => kit.TruncatedStateIsRefusedAndLeavesTheDeviceUnchanged());
        Assert.AreEqual(
            "latch: Load refused the state truncated to 1 of 4 bytes, but the device changed (byte 0 is 0x11, expected 0x00 (4 bytes)). " +
            "Load must parse and validate everything first, then change the device, so a refused state leaves it as it was.", message);
    }

    [TestMethod]
    public void ADeviceThatSavesNothingFails()
    {
        string message = KitFails(DeviceFlaw.SavesNothing, kit => kit.DeclaresHowItMigrates());
        Assert.AreEqual(
            "latch: section 'latch' version 2 saves zero bytes. A device with state must save it; a device that cannot migrate " +
            "must return DeviceMigration.Unmigratable(reason); a device with truly no state must say so by overriding StatelessByDesign in its conformance test.", message);
    }

    [TestMethod]
    public void ALoadThatForgetsARegisterFailsTheRoundTrip()
    {
        string message = KitFails(DeviceFlaw.LoadForgetsARegister, kit => kit.SaveThenLoadIntoAFreshDeviceGivesAnEqualDevice());
        Assert.AreEqual(
            "latch: after loading the source's state, the destination saves different bytes (byte 2 is 0x00, expected 0x33 (4 bytes)). " +
            "Load does not restore everything Save writes, or Save writes something Load ignores.", message);
    }

    [TestMethod]
    public void ALoadThatThrowsSomethingElseThanDeviceStateExceptionFails()
    {
        string message = KitFails(DeviceFlaw.LoadThrowsTheWrongException, kit => kit.TruncatedStateIsRefusedAndLeavesTheDeviceUnchanged());
        StringAssert.StartsWith(message, "latch: loading the state truncated to 0 of 4 bytes threw System.IndexOutOfRangeException (");
        StringAssert.EndsWith(message, "Load must validate what it reads and throw DeviceStateException naming the section and the field, so the operator learns which device's state was bad.");
    }

    [TestMethod]
    public void ADeviceThatLoadsANewerVersionFails()
    {
        string message = KitFails(DeviceFlaw.AcceptsANewerVersion, kit => kit.TooNewStateIsRefusedAndLeavesTheDeviceUnchanged());
        Assert.AreEqual("latch: loading a state of version 3 (this device writes version 2) succeeded; Load must refuse it with DeviceStateException.", message);
    }

    [TestMethod]
    public void ADeviceThatIgnoresTrailingBytesFails()
    {
        string message = KitFails(DeviceFlaw.IgnoresTrailingBytes, kit => kit.TrailingBytesAreRefusedAndLeaveTheDeviceUnchanged());
        Assert.AreEqual("latch: loading the 4-byte state followed by one extra byte (call reader.ExpectEnd()) succeeded; Load must refuse it with DeviceStateException.", message);
    }

    [TestMethod]
    public void ADeviceHoldingANativePointerFails()
    {
        string message = KitFails(DeviceFlaw.HoldsAGuestRamPointer, kit => kit.GuestMemoryIsTouchedOnlyThroughTheGuestMemoryApi());
        StringAssert.StartsWith(message, "latch: field RamWindow.<Start>k__BackingField (IntPtr) holds a native pointer. A device must not keep pointers into guest RAM");
    }

    [TestMethod]
    public void ASaveThatWritesGuestMemoryFails()
    {
        string message = KitFails(DeviceFlaw.SaveWritesGuestMemory, kit => kit.GuestMemoryIsTouchedOnlyThroughTheGuestMemoryApi());
        StringAssert.StartsWith(message, "latch: Save wrote guest memory 1 time(s). Save runs after the last RAM pass: pages it dirties would never reach the destination.");
    }

    [TestMethod]
    public void TheSameFlawsPassNoOtherwiseCorrectTest()
    {
        // Each flaw is caught where it should be, and a correct latch passes everything (LatchDevicePassesTheKit).
        var kit = new FlawedDeviceKit(DeviceFlaw.LoadForgetsARegister);
        kit.TruncatedStateIsRefusedAndLeavesTheDeviceUnchanged();
        kit.DeclaresHowItMigrates();
    }
}
