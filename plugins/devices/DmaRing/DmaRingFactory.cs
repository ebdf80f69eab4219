using Modular.Abstractions.Devices;
using Modular.Abstractions.Plugins;
using Modular.Devices.Config;

namespace Modular.Devices.DmaRing;

/// <summary>
/// Builds <see cref="DmaRingDevice"/>s. Config keys: <c>port</c> (default 0x510; 8 ports),
/// <c>instance-id</c> (default 0). Stateless.
/// </summary>
[DeviceMetadata("dma-ring")]
public sealed class DmaRingFactory : IDeviceModelFactory
{
    /// <inheritdoc />
    public PluginAvailability Probe() => PluginAvailability.Usable;

    /// <inheritdoc />
    public IDeviceModel Create(DeviceConfig config, IDeviceContext context)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(context);
        config.RequireKnownKeys("port", "instance-id");
        ushort port = config.GetPortBase("port", 0x510, DmaRingLayout.PortCount);
        uint instanceId = config.GetUInt32InRange("instance-id", 0, 0, int.MaxValue);
        return new DmaRingDevice(config.Id, port, instanceId, context.Memory);
    }
}
