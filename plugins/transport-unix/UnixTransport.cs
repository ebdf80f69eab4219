using System.Net.Sockets;
using Modular.Abstractions.Plugins;
using Modular.Abstractions.Transports;
using Modular.Transports.Shared;

namespace Modular.Transports.Unix;

/// <summary>
/// <c>unix:PATH</c>: a unix stream socket. Listening removes a stale socket file left by a process that
/// died, but refuses a path where a live listener answers, and a path that is not a socket. The listener
/// removes its socket file when disposed. Stateless.
/// </summary>
[TransportMetadata("unix")]
public sealed class UnixTransport : IMigrationTransport, IWarmUpPlugin
{
    /// <summary>Parks the receive threads of the next connection and its preempt channel, and runs a raw channel once over loopback (<see cref="SocketWarmUp"/>).</summary>
    public void WarmUp() => SocketWarmUp.Prepare();

    /// <inheritdoc/>
    public PluginAvailability Probe() => Socket.OSSupportsUnixDomainSockets
        ? PluginAvailability.Usable
        : PluginAvailability.NotUsable("this operating system has no unix domain sockets");

    /// <inheritdoc/>
    public ValueTask<IMigrationConnection> ConnectAsync(TransportEndpoint endpoint, CancellationToken cancellationToken = default)
    {
        string path = PathOf(endpoint);
        if (!File.Exists(path))
        {
            throw new TransportException($"Cannot connect to {endpoint}: no socket file there. Is the destination listening there (migrate-incoming {endpoint})?");
        }

        return SocketEndpoints.ConnectAsync(new UnixDomainSocketEndPoint(path), ProtocolType.Unspecified, endpoint, cancellationToken);
    }

    /// <inheritdoc/>
    public async ValueTask<IMigrationListener> ListenAsync(TransportEndpoint endpoint, CancellationToken cancellationToken = default)
    {
        string path = Path.GetFullPath(PathOf(endpoint));
        var normalized = new TransportEndpoint("unix", path);
        if (File.Exists(path))
        {
            await RemoveStaleSocketAsync(normalized, path, cancellationToken).ConfigureAwait(false);
        }

        Socket socket = SocketEndpoints.Listen(new UnixDomainSocketEndPoint(path), ProtocolType.Unspecified, normalized,
            "Another listener owns the path; choose another path.");
        return new SocketMigrationListener(socket, normalized, _ => normalized.ToString(), () => TryDelete(path));
    }

    private static string PathOf(TransportEndpoint endpoint)
    {
        ArgumentNullException.ThrowIfNull(endpoint);
        if (string.IsNullOrWhiteSpace(endpoint.Address))
        {
            throw new TransportException($"'{endpoint}' is not a valid unix endpoint: unix:PATH expected, for example unix:/run/modular/mig.sock.");
        }

        return endpoint.Address;
    }

    // A socket file outlives the process that bound it. If connecting succeeds, someone listens there:
    // refuse. If it is refused, the file is stale, unless it is not a socket at all (a regular file
    // opens for reading; a socket does not), which we must not delete.
    private static async ValueTask RemoveStaleSocketAsync(TransportEndpoint endpoint, string path, CancellationToken cancellationToken)
    {
        using (var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            try
            {
                await probe.ConnectAsync(new UnixDomainSocketEndPoint(path), cancellationToken).ConfigureAwait(false);
                throw new TransportException($"Cannot listen on {endpoint}: another process is listening on that socket. Stop it or choose another path.");
            }
            catch (SocketException ex) when (ex.SocketErrorCode == SocketError.ConnectionRefused)
            {
                // Nobody listens: stale, or not a socket.
            }
            catch (SocketException ex)
            {
                throw new TransportException($"Cannot listen on {endpoint}: the path exists and cannot be checked ({ex.Message}). Remove it or choose another path.", ex);
            }
        }

        try
        {
            using FileStream regular = File.OpenRead(path);
            throw new TransportException($"Cannot listen on {endpoint}: '{path}' exists and is not a socket. Remove it or choose another path.");
        }
        catch (IOException)
        {
            // open(2) on a socket fails (ENXIO): it is a stale socket file.
        }

        try
        {
            File.Delete(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new TransportException($"Cannot listen on {endpoint}: the stale socket file cannot be removed ({ex.Message}).", ex);
        }
    }

    private static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            // Leave it; the next listener removes it as stale.
        }
    }
}
