using System.Composition;

namespace Modular.Abstractions.Plugins;

/// <summary>Exports an <see cref="Transports.IMigrationTransport"/> for a URI scheme.</summary>
[MetadataAttribute]
[AttributeUsage(AttributeTargets.Class, AllowMultiple = false)]
public sealed class TransportMetadataAttribute : ExportAttribute
{
    /// <summary>Exports the class as the transport for <paramref name="scheme"/>.</summary>
    /// <param name="scheme">The URI scheme, lower case, without the colon (<c>tcp</c>).</param>
    public TransportMetadataAttribute(string scheme) : base(typeof(Transports.IMigrationTransport)) => Scheme = scheme;

    /// <summary>The URI scheme the transport handles.</summary>
    public string Scheme { get; }
}

/// <summary>Exports an <see cref="Devices.IDeviceModelFactory"/> for a device type name.</summary>
[MetadataAttribute]
[AttributeUsage(AttributeTargets.Class, AllowMultiple = false)]
public sealed class DeviceMetadataAttribute : ExportAttribute
{
    /// <summary>Exports the class as the factory for devices of type <paramref name="type"/>.</summary>
    /// <param name="type">The device type as written in the config (<c>serial</c>).</param>
    public DeviceMetadataAttribute(string type) : base(typeof(Devices.IDeviceModelFactory)) => Type = type;

    /// <summary>The device type name.</summary>
    public string Type { get; }
}

/// <summary>Exports an <see cref="Faults.IFaultBackendFactory"/> under a backend name.</summary>
[MetadataAttribute]
[AttributeUsage(AttributeTargets.Class, AllowMultiple = false)]
public sealed class FaultBackendMetadataAttribute : ExportAttribute
{
    /// <summary>Exports the class as the fault backend <paramref name="name"/>.</summary>
    /// <param name="name">The backend name as written in the config (<c>userfaultfd</c>).</param>
    public FaultBackendMetadataAttribute(string name) : base(typeof(Faults.IFaultBackendFactory)) => Name = name;

    /// <summary>The backend name.</summary>
    public string Name { get; }
}
