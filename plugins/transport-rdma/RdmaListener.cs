using Modular.Abstractions.Transports;
using Modular.Transports.Rdma.Interop;

namespace Modular.Transports.Rdma;

/// <summary>
/// A listening rdma_cm id. Each accepted connection's id is moved to its own event channel
/// (rdma_migrate_id), so a connection's DISCONNECTED events never queue behind the listener's.
/// </summary>
internal sealed class RdmaListener : IMigrationListener
{
    private readonly EventChannelHandle _channel;
    private readonly CmIdHandle _id;
    private readonly SemaphoreSlim _acceptGate = new(1, 1);

    private RdmaListener(EventChannelHandle channel, CmIdHandle id, TransportEndpoint endpoint)
    {
        _channel = channel;
        _id = id;
        Endpoint = endpoint;
    }

    /// <inheritdoc />
    public TransportEndpoint Endpoint { get; }

    /// <summary>Binds and listens on <paramref name="address"/> (port 0 picks one).</summary>
    internal static RdmaListener Listen(TransportEndpoint endpoint, RdmaEndpointAddress address)
    {
        EventChannelHandle channel = EventChannelHandle.Create();
        CmIdHandle? id = null;
        try
        {
            id = CmIdHandle.Create(channel);
            id.Bind(address.ToSockaddr());
            id.Listen(backlog: 8);
            var bound = new RdmaEndpointAddress(address.Address, id.LocalPort);
            return new RdmaListener(channel, id, new TransportEndpoint(endpoint.Scheme, bound.ToString()));
        }
        catch (TransportException e)
        {
            id?.Dispose();
            channel.Dispose();
            throw new TransportException($"Cannot listen on {endpoint}: {e.Message}", e);
        }
    }

    /// <inheritdoc />
    public async ValueTask<IMigrationConnection> AcceptAsync(CancellationToken cancellationToken = default)
    {
        await _acceptGate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            return await Task.Run(() => Accept(cancellationToken), cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _acceptGate.Release();
        }
    }

    private RdmaConnection Accept(CancellationToken cancellationToken)
    {
        while (true)
        {
            CmEvent request = ConnectionManagerEvents.Next(_channel, cancellationToken);
            if (request.Type != RdmaCmConstants.RDMA_CM_EVENT_CONNECT_REQUEST)
            {
                continue;
            }

            CmIdHandle id = CmIdHandle.Own(request.Id, _channel);
            if (request.PrivateData != StreamLayout.Hello)
            {
                // Not our protocol (or another version): refuse it, keep listening.
                id.Reject();
                id.Dispose();
                continue;
            }

            RdmaQueuePair? pair = null;
            try
            {
                id.MigrateTo(EventChannelHandle.Create());
                pair = RdmaQueuePair.Create(id);
                id.ConnectOrAccept(StreamLayout.Hello, StreamLayout.ReadDepth, accept: true);
                ConnectionManagerEvents.Expect(id.Channel, RdmaCmConstants.RDMA_CM_EVENT_ESTABLISHED, "accepting a connection", cancellationToken);
                string peer = id.PeerAddress is { } address ? $"{Endpoint.Scheme}:{address}" : $"{Endpoint.Scheme}:peer of {Endpoint.Address}";
                var connection = new RdmaConnection(pair, peer);
                connection.Start();
                return connection;
            }
            catch (TransportException)
            {
                // The request failed half-way (the peer went away); wait for the next one.
                DisposeRequest(id, pair);
            }
            catch (OperationCanceledException)
            {
                DisposeRequest(id, pair);
                throw;
            }
        }
    }

    /// <summary>Releases a half-accepted request: the queue pair (which owns the id and its channel), or the id and the channel it was moved to.</summary>
    private void DisposeRequest(CmIdHandle id, RdmaQueuePair? pair)
    {
        if (pair is not null)
        {
            pair.Dispose();
            return;
        }

        EventChannelHandle channel = id.Channel;
        id.Dispose();
        if (channel != _channel)
        {
            channel.Dispose();
        }
    }

    /// <inheritdoc />
    public ValueTask DisposeAsync()
    {
        _id.Dispose();
        _channel.Dispose();
        _acceptGate.Dispose();
        return ValueTask.CompletedTask;
    }
}
