using System.Globalization;
using System.Net;
using System.Net.Sockets;
using Modular.Abstractions.Plugins;
using Modular.Abstractions.Transports;
using Modular.Transports.Shared;

namespace Modular.Transports.Tcp;

/// <summary>
/// <c>tcp:HOST:PORT</c> (IPv6 as <c>tcp:[::1]:PORT</c>; an empty host listens on all IPv4 addresses).
/// The forward path and the return path share one TCP connection, as in QEMU. Stateless.
/// </summary>
[TransportMetadata("tcp")]
public sealed class TcpTransport : IMigrationTransport, IWarmUpPlugin
{
    /// <summary>Parks the receive threads of the next connection and its preempt channel, and runs a raw channel once over loopback (<see cref="SocketWarmUp"/>).</summary>
    public void WarmUp() => SocketWarmUp.Prepare();

    /// <inheritdoc/>
    public PluginAvailability Probe() => PluginAvailability.Usable;

    /// <inheritdoc/>
    public async ValueTask<IMigrationConnection> ConnectAsync(TransportEndpoint endpoint, CancellationToken cancellationToken = default)
    {
        (string host, int port) = Parse(endpoint);
        if (host.Length == 0)
        {
            throw Malformed(endpoint, "a host is needed to connect");
        }

        IPAddress address = await ResolveAsync(endpoint, host, cancellationToken).ConfigureAwait(false);
        return await SocketEndpoints.ConnectAsync(new IPEndPoint(address, port), ProtocolType.Tcp, Format(address, port), cancellationToken).ConfigureAwait(false);
    }

    /// <inheritdoc/>
    public async ValueTask<IMigrationListener> ListenAsync(TransportEndpoint endpoint, CancellationToken cancellationToken = default)
    {
        (string host, int port) = Parse(endpoint);
        IPAddress address = host.Length == 0 ? IPAddress.Any : await ResolveAsync(endpoint, host, cancellationToken).ConfigureAwait(false);
        Socket socket = SocketEndpoints.Listen(new IPEndPoint(address, port), ProtocolType.Tcp, endpoint,
            "Stop the process listening there, or use port 0 to pick a free one.");
        var bound = (IPEndPoint)socket.LocalEndPoint!;
        return new SocketMigrationListener(socket, Format(bound.Address, bound.Port),
            s => s.RemoteEndPoint is IPEndPoint p ? Format(p.Address, p.Port).ToString() : "tcp:?");
    }

    /// <summary>Splits <c>HOST:PORT</c> or <c>[V6]:PORT</c>.</summary>
    internal static (string Host, int Port) Parse(TransportEndpoint endpoint)
    {
        ArgumentNullException.ThrowIfNull(endpoint);
        string a = endpoint.Address;
        int colon = a.LastIndexOf(':');
        if (colon < 0)
        {
            throw Malformed(endpoint, "the port is missing");
        }

        string host = a[..colon];
        if (host.StartsWith('['))
        {
            if (!host.EndsWith(']'))
            {
                throw Malformed(endpoint, "an IPv6 address in brackets must end with ']'");
            }

            host = host[1..^1];
        }
        else if (host.Contains(':', StringComparison.Ordinal))
        {
            throw Malformed(endpoint, "write an IPv6 address in brackets");
        }

        if (!int.TryParse(a[(colon + 1)..], NumberStyles.None, CultureInfo.InvariantCulture, out int port) || port > 65535)
        {
            throw Malformed(endpoint, $"'{a[(colon + 1)..]}' is not a port number (0-65535)");
        }

        return (host, port);
    }

    private static TransportException Malformed(TransportEndpoint endpoint, string why) =>
        new($"'{endpoint}' is not a valid tcp endpoint ({why}): tcp:HOST:PORT expected, for example tcp:127.0.0.1:4444 or tcp:[::1]:4444.");

    private static TransportEndpoint Format(IPAddress address, int port) =>
        new("tcp", address.AddressFamily == AddressFamily.InterNetworkV6
            ? $"[{address}]:{port.ToString(CultureInfo.InvariantCulture)}"
            : $"{address}:{port.ToString(CultureInfo.InvariantCulture)}");

    private static async ValueTask<IPAddress> ResolveAsync(TransportEndpoint endpoint, string host, CancellationToken cancellationToken)
    {
        if (IPAddress.TryParse(host, out IPAddress? literal))
        {
            return literal;
        }

        try
        {
            IPAddress[] addresses = await Dns.GetHostAddressesAsync(host, cancellationToken).ConfigureAwait(false);
            return addresses.FirstOrDefault(a => a.AddressFamily == AddressFamily.InterNetwork) ?? addresses.First();
        }
        catch (Exception ex) when (ex is SocketException or InvalidOperationException)
        {
            throw new TransportException($"Cannot resolve host '{host}' of {endpoint}: {ex.Message}. Use an IP address or a name this host can resolve.", ex);
        }
    }
}
