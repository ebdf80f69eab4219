using Modular.Abstractions.Devices;

namespace Modular.Devices.Tests.Doubles;

/// <summary>Small conveniences for building configs and moving device state.</summary>
public static class DeviceTesting
{
    public static DeviceConfig ConfigOf(string type, params (string Key, string Value)[] properties) =>
        new($"{type}0", type, "devices[0]", properties.ToDictionary(p => p.Key, p => p.Value));

    public static ISaveVmSection SectionOf(IDeviceModel device) =>
        device.Migration.Section ?? throw new AssertFailedException($"{device.Id} has no savevm section.");

    public static byte[] Save(IDeviceModel device)
    {
        var writer = new SaveVmWriter();
        SectionOf(device).Save(writer);
        return writer.ToArray();
    }

    public static void Load(IDeviceModel device, byte[] state, uint? version = null)
    {
        ISaveVmSection section = SectionOf(device);
        section.Load(new SaveVmReader(state, $"{section.IdString}/{section.InstanceId}"), version ?? section.Version);
    }

    public static void Out8(IDeviceModel device, int port, byte value) => device.PortWrite((ushort)port, [value]);

    public static byte In8(IDeviceModel device, int port)
    {
        Span<byte> b = stackalloc byte[1];
        device.PortRead((ushort)port, b);
        return b[0];
    }

    public static void Out32(IDeviceModel device, int port, uint value) =>
        device.PortWrite((ushort)port, BitConverter.GetBytes(value));

    public static uint In32(IDeviceModel device, int port)
    {
        Span<byte> b = stackalloc byte[4];
        device.PortRead((ushort)port, b);
        return BitConverter.ToUInt32(b);
    }
}
