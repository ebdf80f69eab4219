using Modular.Abstractions.Plugins;
using Modular.Abstractions.Transports;

namespace Modular.Transports.Rdma;

/// <summary>
/// The <c>rdma:HOST:PORT</c> transport: the migration stream and its return path over an RDMA
/// reliable-connected queue pair set up with rdma_cm, plus a one-sided page channel
/// (<see cref="IPageChannel"/>, RDMA READ) on every connection. HOST is an IP address (or name) of an
/// RDMA-capable interface (a RoCE NIC, IPoIB, or Soft-RoCE's netdev). Stateless; shared by every migration.
/// </summary>
[TransportMetadata("rdma")]
public sealed class RdmaTransport : IMigrationTransport
{
    /// <summary>Usable when rdma-core loads and libibverbs lists a device that opens; otherwise says what is missing.</summary>
    public PluginAvailability Probe() => RdmaAvailability.Probe();

    /// <inheritdoc />
    /// <exception cref="TransportException">No usable RDMA device (the message says why, at once), or the connection failed.</exception>
    public async ValueTask<IMigrationConnection> ConnectAsync(TransportEndpoint endpoint, CancellationToken cancellationToken = default)
    {
        RdmaEndpointAddress address = Prepare(endpoint, "connect to");
        return await Task.Run(() => RdmaConnector.Connect(endpoint, address, cancellationToken), cancellationToken).ConfigureAwait(false);
    }

    /// <inheritdoc />
    /// <exception cref="TransportException">No usable RDMA device (the message says why, at once), or the endpoint cannot be bound.</exception>
    public ValueTask<IMigrationListener> ListenAsync(TransportEndpoint endpoint, CancellationToken cancellationToken = default)
    {
        RdmaEndpointAddress address = Prepare(endpoint, "listen on");
        cancellationToken.ThrowIfCancellationRequested();
        return ValueTask.FromResult<IMigrationListener>(RdmaListener.Listen(endpoint, address));
    }

    private RdmaEndpointAddress Prepare(TransportEndpoint endpoint, string verb)
    {
        ArgumentNullException.ThrowIfNull(endpoint);
        if (endpoint.Scheme != "rdma")
        {
            throw new TransportException($"The rdma transport cannot {verb} '{endpoint}': its scheme is not rdma.");
        }

        PluginAvailability availability = Probe();
        if (!availability.IsUsable)
        {
            throw new TransportException($"Cannot {verb} {endpoint}: {availability.Reason}");
        }

        return RdmaEndpointAddress.Parse(endpoint);
    }
}
