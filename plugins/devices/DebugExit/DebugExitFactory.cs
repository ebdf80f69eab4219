using Modular.Abstractions.Devices;
using Modular.Abstractions.Plugins;
using Modular.Devices.Config;

namespace Modular.Devices.DebugExit;

/// <summary>
/// Builds <see cref="DebugExitDevice"/>s. Config keys: <c>iobase</c> (default 0xf4), <c>iosize</c>
/// (1, 2 or 4; default 1), <c>instance-id</c> (default 0). Stateless.
/// </summary>
[DeviceMetadata("debug-exit")]
public sealed class DebugExitFactory : IDeviceModelFactory
{
    /// <inheritdoc />
    public PluginAvailability Probe() => PluginAvailability.Usable;

    /// <inheritdoc />
    public IDeviceModel Create(DeviceConfig config, IDeviceContext context)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(context);
        config.RequireKnownKeys("iobase", "iosize", "instance-id");
        uint size = config.GetUInt32InRange("iosize", 1, 1, 4);
        if (size == 3)
        {
            throw new DeviceConfigException($"{config.Path}.iosize: 3 is not an access size; expected 1, 2 or 4.");
        }

        ushort iobase = config.GetPortBase("iobase", 0xf4, (int)size);
        uint instanceId = config.GetUInt32InRange("instance-id", 0, 0, int.MaxValue);
        return new DebugExitDevice(config.Id, new IoPortRange(iobase, (ushort)size), instanceId, context);
    }
}
