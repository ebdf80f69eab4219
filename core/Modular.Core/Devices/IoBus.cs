using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Modular.Abstractions.Devices;
using Modular.Abstractions.Memory;

namespace Modular.Core.Devices;

/// <summary>
/// The machine's port-I/O and MMIO bus: routes each vCPU exit to the device that claimed the port or
/// address. Unclaimed port and MMIO reads return 0xff bytes (a floating bus, as QEMU answers for
/// unassigned ports) and unclaimed writes are ignored; both are counted, and each unclaimed port (and
/// the first unclaimed MMIO access) is logged once at debug level.
/// </summary>
/// <remarks>
/// Threads: <see cref="Add"/> runs during machine setup (serialised by a lock). Dispatch runs on vCPU
/// threads, several at once, without a lock: it reads one immutable routing table, which
/// <see cref="Add"/> replaces as a whole. An access is routed by its first port or address; a
/// multi-byte access that runs past the device's range still goes to that device.
/// </remarks>
public sealed partial class IoBus
{
    private const int PortSpace = 0x10000;

    private readonly object _setupLock = new();
    private readonly ILogger _logger;
    private readonly long[] _loggedPorts = new long[PortSpace / 64];
    private volatile Routes _routes = new([], new IDeviceModel?[PortSpace], []);
    private long _unclaimedPortAccesses;
    private long _unclaimedMmioAccesses;
    private int _mmioLogged;

    /// <summary>Creates an empty bus.</summary>
    /// <param name="logger">Receives the debug messages about unclaimed accesses; none when null.</param>
    public IoBus(ILogger<IoBus>? logger = null) => _logger = logger ?? NullLogger<IoBus>.Instance;

    /// <summary>An immutable routing table: replaced as a whole, never changed once published.</summary>
    private sealed record Routes(IDeviceModel[] Devices, IDeviceModel?[] PortOwners, MmioRoute[] Mmio);

    private readonly record struct MmioRoute(MmioRange Range, IDeviceModel Device);

    /// <summary>The devices on the bus, in the order they were added.</summary>
    public IReadOnlyList<IDeviceModel> Devices => _routes.Devices;

    /// <summary>Port accesses (reads and writes) that no device claimed.</summary>
    public long UnclaimedPortAccesses => Interlocked.Read(ref _unclaimedPortAccesses);

    /// <summary>MMIO accesses (reads and writes) that no device claimed.</summary>
    public long UnclaimedMmioAccesses => Interlocked.Read(ref _unclaimedMmioAccesses);

    /// <summary>
    /// Puts <paramref name="device"/> on the bus with the ranges it claims. Machine setup thread.
    /// </summary>
    /// <exception cref="IoBusAttachException">A range overlaps another device's (or the device's own),
    /// is empty or runs past the end of its space, or the device id is already on the bus.</exception>
    public void Add(IDeviceModel device)
    {
        ArgumentNullException.ThrowIfNull(device);
        lock (_setupLock)
        {
            Routes current = _routes;
            if (current.Devices.FirstOrDefault(d => d.Id == device.Id) is { } same)
            {
                throw new IoBusAttachException(
                    $"A device with id '{device.Id}' is already on the bus{(ReferenceEquals(same, device) ? " (the same device was added twice)" : "")}. Device ids must be unique.");
            }

            IDeviceModel?[] ports = (IDeviceModel?[])current.PortOwners.Clone();
            foreach (IoPortRange range in device.Ports)
            {
                if (range.Count == 0 || range.First + range.Count > PortSpace)
                {
                    throw new IoBusAttachException(
                        $"Device '{device.Id}' claims the port range first=0x{range.First:x} count={range.Count}, which is empty or runs past port 0xffff.");
                }

                for (int port = range.First; port < range.First + range.Count; port++)
                {
                    IDeviceModel? owner = ports[port];
                    if (ReferenceEquals(owner, device))
                    {
                        throw new IoBusAttachException(
                            $"Device '{device.Id}' claims port 0x{port:x} twice: its port ranges overlap each other.");
                    }

                    if (owner is not null)
                    {
                        throw new IoBusAttachException(
                            $"Device '{device.Id}' claims ports {range}, which overlap ports {RangeOf(owner, (ushort)port)} of device '{owner.Id}' (first shared port 0x{port:x}). Give one of them a different port in the config.");
                    }

                    ports[port] = device;
                }
            }

            var mmio = new List<MmioRoute>(current.Mmio);
            foreach (MmioRange range in device.Mmio)
            {
                if (range.Length == 0 || range.Start.Value > ulong.MaxValue - (range.Length - 1))
                {
                    throw new IoBusAttachException(
                        $"Device '{device.Id}' claims the MMIO range start={range.Start} length=0x{range.Length:x}, which is empty or runs past the end of the address space.");
                }

                foreach (MmioRoute other in mmio)
                {
                    if (other.Range.Overlaps(range))
                    {
                        string whose = ReferenceEquals(other.Device, device) ? "its own MMIO range" : $"MMIO {other.Range} of device '{other.Device.Id}'";
                        throw new IoBusAttachException(
                            $"Device '{device.Id}' claims MMIO {range}, which overlaps {whose}. Give one of them a different address in the config.");
                    }
                }

                mmio.Add(new MmioRoute(range, device));
            }

            mmio.Sort((a, b) => a.Range.Start.CompareTo(b.Range.Start));
            _routes = new Routes([.. current.Devices, device], ports, [.. mmio]);
        }
    }

    /// <summary>The device that claimed <paramref name="port"/>, or null. Any thread.</summary>
    public IDeviceModel? FindPortOwner(ushort port) => _routes.PortOwners[port];

    /// <summary>The device that claimed <paramref name="address"/>, or null. Any thread.</summary>
    public IDeviceModel? FindMmioOwner(GuestPhysicalAddress address) => FindMmio(_routes.Mmio, address);

    /// <summary>A guest IN of <paramref name="data"/>.Length bytes from <paramref name="port"/>. vCPU thread, no lock.</summary>
    public void PortIn(ushort port, Span<byte> data)
    {
        if (_routes.PortOwners[port] is { } device)
        {
            device.PortRead(port, data);
            return;
        }

        data.Fill(0xff);
        UnclaimedPort(port, "read", data.Length);
    }

    /// <summary>A guest OUT of <paramref name="data"/> to <paramref name="port"/>. vCPU thread, no lock.</summary>
    public void PortOut(ushort port, ReadOnlySpan<byte> data)
    {
        if (_routes.PortOwners[port] is { } device)
        {
            device.PortWrite(port, data);
            return;
        }

        UnclaimedPort(port, "write", data.Length);
    }

    /// <summary>A guest MMIO read at <paramref name="address"/>. vCPU thread, no lock.</summary>
    public void MmioRead(GuestPhysicalAddress address, Span<byte> data)
    {
        if (FindMmio(_routes.Mmio, address) is { } device)
        {
            device.MmioRead(address, data);
            return;
        }

        data.Fill(0xff);
        UnclaimedMmio(address, "read", data.Length);
    }

    /// <summary>A guest MMIO write at <paramref name="address"/>. vCPU thread, no lock.</summary>
    public void MmioWrite(GuestPhysicalAddress address, ReadOnlySpan<byte> data)
    {
        if (FindMmio(_routes.Mmio, address) is { } device)
        {
            device.MmioWrite(address, data);
            return;
        }

        UnclaimedMmio(address, "write", data.Length);
    }

    private static IDeviceModel? FindMmio(MmioRoute[] routes, GuestPhysicalAddress address)
    {
        // The last range starting at or below the address is the only one that can contain it
        // (ranges do not overlap).
        int lo = 0, hi = routes.Length - 1, found = -1;
        while (lo <= hi)
        {
            int mid = lo + ((hi - lo) / 2);
            if (routes[mid].Range.Start <= address) { found = mid; lo = mid + 1; }
            else { hi = mid - 1; }
        }

        return found >= 0 && routes[found].Range.Contains(address) ? routes[found].Device : null;
    }

    private static IoPortRange RangeOf(IDeviceModel device, ushort port) =>
        device.Ports.FirstOrDefault(r => r.Contains(port));

    private void UnclaimedPort(ushort port, string access, int size)
    {
        Interlocked.Increment(ref _unclaimedPortAccesses);
        long bit = 1L << (port % 64);
        if ((Interlocked.Or(ref _loggedPorts[port / 64], bit) & bit) == 0)
        {
            LogUnclaimedPort(_logger, access, size, $"0x{port:x}");
        }
    }

    private void UnclaimedMmio(GuestPhysicalAddress address, string access, int size)
    {
        Interlocked.Increment(ref _unclaimedMmioAccesses);
        if (Interlocked.Exchange(ref _mmioLogged, 1) == 0)
        {
            LogUnclaimedMmio(_logger, access, size, address.ToString());
        }
    }

    [LoggerMessage(Level = LogLevel.Debug, Message = "Unclaimed port {Access} of {Size} bytes at {Port}: reads return 0xff, writes are ignored (logged once per port).")]
    private static partial void LogUnclaimedPort(ILogger logger, string access, int size, string port);

    [LoggerMessage(Level = LogLevel.Debug, Message = "Unclaimed MMIO {Access} of {Size} bytes at {Address}: reads return 0xff, writes are ignored (only the first is logged; see UnclaimedMmioAccesses).")]
    private static partial void LogUnclaimedMmio(ILogger logger, string access, int size, string address);
}
