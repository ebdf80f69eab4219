using Modular.Abstractions.Devices;
using Modular.Abstractions.Memory;
using Modular.Conformance.Devices;
using Modular.Devices.DebugExit;
using Modular.Devices.DmaRing;
using Modular.Devices.Serial;
using Modular.Devices.Tests.DmaRing;
using Modular.Devices.Tests.Doubles;
using static Modular.Devices.DmaRing.DmaRingLayout;
using static Modular.Devices.Tests.Doubles.DeviceTesting;

namespace Modular.Devices.Tests.Conformance;

/// <summary>The conformance kit against the serial 16550A.</summary>
[TestClass]
public sealed class SerialConformanceTests : DeviceModelConformanceTests
{
    private const int Base = 0x3f8;

    protected override IDeviceModelFactory Factory { get; } = new SerialFactory();

    protected override DeviceConfig Config => ConfigOf("serial", ("output", "null"));

    protected override void DriveToNonDefaultState(IDeviceModel device, IGuestMemory ram)
    {
        Out8(device, Base + 3, 0x80);       // DLAB
        Out8(device, Base, 0x01);
        Out8(device, Base + 1, 0x00);       // 115200 baud
        Out8(device, Base + 3, 0x1b);       // 8E1, DLAB off
        Out8(device, Base + 2, 0xc7);       // FIFO on, trigger 14
        Out8(device, Base + 1, 0x03);       // IER: rx + thr
        Out8(device, Base + 4, 0x1b);       // loopback, OUT2, RTS, DTR
        Out8(device, Base, 0x42);           // loops back into RBR
        Out8(device, Base + 7, 0x99);
    }

    protected override IEnumerable<(string What, byte[] State)> InvalidStates(byte[] validState)
    {
        byte[] ier = (byte[])validState.Clone();
        ier[1] = 0xff;
        yield return ("a state whose IER sets reserved bits", ier);
        byte[] busy = (byte[])validState.Clone();
        busy[5] = 0x00;
        yield return ("a state whose LSR says the transmitter is busy", busy);
    }
}

/// <summary>The conformance kit against isa-debug-exit, which has no state.</summary>
[TestClass]
public sealed class DebugExitConformanceTests : DeviceModelConformanceTests
{
    protected override IDeviceModelFactory Factory { get; } = new DebugExitFactory();

    protected override string StatelessByDesign => "isa-debug-exit has no registers: a write only asks the machine to exit";

    protected override void DriveToNonDefaultState(IDeviceModel device, IGuestMemory ram) => In8(device, 0xf4);
}

/// <summary>The conformance kit against the DMA ring device, whose Load reads the ring from guest RAM.</summary>
[TestClass]
public sealed class DmaRingConformanceTests : DeviceModelConformanceTests
{
    protected override IDeviceModelFactory Factory { get; } = new DmaRingFactory();

    protected override IGuestMemory CreateGuestMemory() => new InMemoryGuestMemory(1 << 20);

    /// <summary>3 descriptors done, 2 pending, an error code set and SELECT away from its default.</summary>
    protected override void DriveToNonDefaultState(IDeviceModel device, IGuestMemory ram)
    {
        var driver = new RingBuilder((DmaRingDevice)device, (InMemoryGuestMemory)ram, 0x2ff0, 8);
        driver.Enable();
        for (int i = 0; i < 3; i++) { driver.Produce(0x10000, 0x20000, 16, OpCopy); }
        driver.Kick();
        driver.SetRegister(Register.RingSize, 4);
        driver.Produce(0x10000, 0x21000, 16, OpCopy);
        driver.Produce(0x10000, 0x22000, 16, OpCrc32);
        Out32(device, 0x510, Register.Consumer);
    }
}
