using Modular.Abstractions.Transports;
using Modular.Transports.Rdma.Interop;

namespace Modular.Transports.Rdma;

/// <summary>
/// The active side of rdma_cm connection setup (blocking calls; run on a pool thread):
/// <code>
///  connector                                   listener
///  rdma_resolve_addr  -> ADDR_RESOLVED
///  rdma_resolve_route -> ROUTE_RESOLVED
///  create PD, CQ, RC QP, post receives
///  rdma_connect(hello) ------------------------> CONNECT_REQUEST (new id)
///                                               create PD, CQ, RC QP, post receives
///               ESTABLISHED &lt;------------------ rdma_accept(hello)
///                                               ESTABLISHED
/// </code>
/// Receives are posted before connect/accept so the first SEND from either side finds one.
/// </summary>
internal static class RdmaConnector
{
    /// <summary>Timeout for address and route resolution, in milliseconds.</summary>
    private const int ResolveTimeoutMs = 5000;

    internal static RdmaConnection Connect(TransportEndpoint endpoint, RdmaEndpointAddress address, CancellationToken cancellationToken)
    {
        EventChannelHandle channel = EventChannelHandle.Create();
        CmIdHandle? id = null;
        RdmaQueuePair? pair = null;
        try
        {
            id = CmIdHandle.Create(channel);
            id.ResolveAddress(address.ToSockaddr(), ResolveTimeoutMs);
            ConnectionManagerEvents.Expect(channel, RdmaCmConstants.RDMA_CM_EVENT_ADDR_RESOLVED, $"resolving {address} to an RDMA device", cancellationToken);
            id.ResolveRoute(ResolveTimeoutMs);
            ConnectionManagerEvents.Expect(channel, RdmaCmConstants.RDMA_CM_EVENT_ROUTE_RESOLVED, $"resolving the route to {address}", cancellationToken);
            pair = RdmaQueuePair.Create(id);
            id.ConnectOrAccept(StreamLayout.Hello, StreamLayout.ReadDepth, accept: false);
            CmEvent established = ConnectionManagerEvents.Next(channel, cancellationToken);
            if (established.Type != RdmaCmConstants.RDMA_CM_EVENT_ESTABLISHED)
            {
                throw new TransportException(established.Type switch
                {
                    RdmaCmConstants.RDMA_CM_EVENT_REJECTED =>
                        $"the peer rejected the connection (RDMA_CM_EVENT_REJECTED, status {established.Status}): nothing listens on that port, or it is not a Modular rdma listener of this version",
                    RdmaCmConstants.RDMA_CM_EVENT_UNREACHABLE => $"the peer is unreachable (RDMA_CM_EVENT_UNREACHABLE, status {established.Status})",
                    _ => $"expected RDMA_CM_EVENT_ESTABLISHED, got {established.Name} (status {established.Status})",
                });
            }

            var connection = new RdmaConnection(pair, endpoint.ToString());
            connection.Start();
            return connection;
        }
        catch (Exception e) when (e is TransportException or OperationCanceledException)
        {
            if (pair is not null)
            {
                pair.Dispose();
            }
            else
            {
                id?.Dispose();
                channel.Dispose();
            }

            if (e is OperationCanceledException)
            {
                throw;
            }

            throw new TransportException($"Cannot connect to {endpoint}: {e.Message}", e);
        }
    }
}
