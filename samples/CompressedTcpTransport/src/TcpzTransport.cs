using System.Globalization;
using System.Net;
using System.Net.Sockets;
using Modular.Abstractions.Plugins;
using Modular.Abstractions.Transports;

namespace Example.Tcpz;

/// <summary>
/// <c>tcpz:HOST:PORT</c>: the migration stream over TCP, compressed in frames with Brotli (quality 1).
/// Frames whose data does not shrink are sent as they are, so incompressible RAM costs nothing extra
/// on the receiving side. Stateless: shared by every migration in the process.
/// </summary>
[TransportMetadata("tcpz")]
public sealed class TcpzTransport : IMigrationTransport
{
    /// <inheritdoc/>
    public PluginAvailability Probe() => PluginAvailability.Usable;

    /// <inheritdoc/>
    public async ValueTask<IMigrationConnection> ConnectAsync(TransportEndpoint endpoint, CancellationToken cancellationToken = default)
    {
        IPEndPoint target = Parse(endpoint);
        var socket = new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            await socket.ConnectAsync(target, cancellationToken).ConfigureAwait(false);
        }
        catch (SocketException ex)
        {
            socket.Dispose();
            string why = ex.SocketErrorCode == SocketError.ConnectionRefused ? "connection refused" : ex.Message;
            throw new TransportException($"Cannot connect to {endpoint}: {why}. Is the destination listening there (migrate-incoming {endpoint})?", ex);
        }
        catch
        {
            socket.Dispose();
            throw;
        }

        return new TcpzConnection(socket, endpoint.ToString());
    }

    /// <inheritdoc/>
    public ValueTask<IMigrationListener> ListenAsync(TransportEndpoint endpoint, CancellationToken cancellationToken = default)
    {
        IPEndPoint local = Parse(endpoint);
        var socket = new Socket(local.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            socket.Bind(local);
            socket.Listen(8);
        }
        catch (SocketException ex)
        {
            socket.Dispose();
            string why = ex.SocketErrorCode == SocketError.AddressAlreadyInUse
                ? "the address is already in use. Stop the process listening there, or use port 0 to pick a free one"
                : ex.Message;
            throw new TransportException($"Cannot listen on {endpoint}: {why}.", ex);
        }

        return ValueTask.FromResult<IMigrationListener>(new TcpzListener(socket, Format((IPEndPoint)socket.LocalEndPoint!)));
    }

    /// <summary>Parses <c>HOST:PORT</c> with an IPv4 or bracketed IPv6 literal, or <c>localhost</c>.</summary>
    internal static IPEndPoint Parse(TransportEndpoint endpoint)
    {
        ArgumentNullException.ThrowIfNull(endpoint);
        string address = endpoint.Address;
        int colon = address.LastIndexOf(':');
        string host = colon < 0 ? "" : address[..colon].Trim('[', ']');
        if (colon < 0
            || !int.TryParse(address[(colon + 1)..], NumberStyles.None, CultureInfo.InvariantCulture, out int port) || port > 65535
            || !(IPAddress.TryParse(host, out IPAddress? ip) || (host == "localhost" && (ip = IPAddress.Loopback) is not null)))
        {
            throw new TransportException($"'{endpoint}' is not a valid tcpz endpoint: tcpz:HOST:PORT expected, with an IP address, for example tcpz:127.0.0.1:4444.");
        }

        return new IPEndPoint(ip, port);
    }

    internal static TransportEndpoint Format(IPEndPoint endPoint) =>
        new("tcpz", endPoint.AddressFamily == AddressFamily.InterNetworkV6
            ? $"[{endPoint.Address}]:{endPoint.Port.ToString(CultureInfo.InvariantCulture)}"
            : $"{endPoint.Address}:{endPoint.Port.ToString(CultureInfo.InvariantCulture)}");

    private sealed class TcpzListener(Socket socket, TransportEndpoint endpoint) : IMigrationListener
    {
        public TransportEndpoint Endpoint => endpoint;

        public async ValueTask<IMigrationConnection> AcceptAsync(CancellationToken cancellationToken = default)
        {
            Socket accepted;
            try
            {
                accepted = await socket.AcceptAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
            {
                throw new TransportException($"Accepting a migration connection on {endpoint} failed: {ex.Message}", ex);
            }

            accepted.NoDelay = true;
            return new TcpzConnection(accepted, accepted.RemoteEndPoint is IPEndPoint peer ? Format(peer).ToString() : "tcpz:?");
        }

        public ValueTask DisposeAsync()
        {
            socket.Dispose();
            return ValueTask.CompletedTask;
        }
    }
}
