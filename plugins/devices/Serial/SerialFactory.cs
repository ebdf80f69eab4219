using Modular.Abstractions.Devices;
using Modular.Abstractions.Plugins;
using Modular.Devices.Config;

namespace Modular.Devices.Serial;

/// <summary>
/// Builds <see cref="SerialDevice"/>s. Config keys: <c>port</c> (default 0x3f8; 8 ports),
/// <c>output</c> (stdio | null | file:PATH | unix:PATH; default stdio), <c>instance-id</c> (savevm
/// instance id; default the COM index for 0x3f8/0x2f8/0x3e8/0x2e8, else 0). Stateless.
/// </summary>
[DeviceMetadata("serial")]
public sealed class SerialFactory : IDeviceModelFactory
{
    /// <inheritdoc />
    public PluginAvailability Probe() => PluginAvailability.Usable;

    /// <inheritdoc />
    public IDeviceModel Create(DeviceConfig config, IDeviceContext context)
    {
        ArgumentNullException.ThrowIfNull(config);
        config.RequireKnownKeys("port", "output", "instance-id");
        ushort port = config.GetPortBase("port", 0x3f8, 8);
        uint defaultInstance = port switch { 0x2f8 => 1u, 0x3e8 => 2u, 0x2e8 => 3u, _ => 0u };
        uint instanceId = config.GetUInt32InRange("instance-id", defaultInstance, 0, int.MaxValue);
        SerialSink sink = SerialSink.Open(config.GetString("output", "stdio"), config, "output");
        return new SerialDevice(config.Id, port, instanceId, sink);
    }
}
