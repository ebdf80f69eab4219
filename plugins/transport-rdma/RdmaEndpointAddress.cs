using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Modular.Abstractions.Transports;
using Modular.Transports.Rdma.Interop;

namespace Modular.Transports.Rdma;

/// <summary>The HOST:PORT part of an <c>rdma:HOST:PORT</c> URI, resolved to an IP address and laid out as a sockaddr.</summary>
internal sealed record RdmaEndpointAddress(IPAddress Address, int Port)
{
    /// <summary>Parses <c>HOST:PORT</c> (<c>192.168.1.5:4444</c>, <c>[fe80::1]:4444</c>, <c>host.example:4444</c>).</summary>
    /// <exception cref="TransportException">The address is malformed or the host name does not resolve.</exception>
    internal static RdmaEndpointAddress Parse(TransportEndpoint endpoint)
    {
        string text = endpoint.Address;
        int colon = text.LastIndexOf(':');
        if (colon <= 0 || !int.TryParse(text.AsSpan(colon + 1), out int port) || port is < 0 or > 65535)
        {
            throw new TransportException($"'{endpoint}' is not of the form rdma:HOST:PORT (for example rdma:192.168.1.5:4444).");
        }

        string host = text[..colon].Trim('[', ']');
        if (!IPAddress.TryParse(host, out IPAddress? address))
        {
            try
            {
                address = Dns.GetHostAddresses(host).FirstOrDefault(a => a.AddressFamily is AddressFamily.InterNetwork or AddressFamily.InterNetworkV6);
            }
            catch (SocketException e)
            {
                throw new TransportException($"'{endpoint}': host '{host}' does not resolve ({e.Message}).", e);
            }

            if (address is null)
            {
                throw new TransportException($"'{endpoint}': host '{host}' has no IPv4 or IPv6 address.");
            }
        }

        return new RdmaEndpointAddress(address, port);
    }

    /// <summary>The address as struct sockaddr_in or sockaddr_in6 bytes, for rdma_bind_addr and rdma_resolve_addr.</summary>
    internal byte[] ToSockaddr()
    {
        bool v6 = Address.AddressFamily == AddressFamily.InterNetworkV6;
        byte[] sockaddr = new byte[v6 ? RdmaCmLayout.SockaddrIn6 : RdmaCmLayout.SockaddrIn];
        BinaryPrimitives.WriteUInt16LittleEndian(sockaddr, v6 ? RdmaCmConstants.AF_INET6 : RdmaCmConstants.AF_INET);
        BinaryPrimitives.WriteUInt16BigEndian(sockaddr.AsSpan(2), (ushort)Port);
        if (v6)
        {
            // sin6_flowinfo (4 bytes, zero), sin6_addr at 8, sin6_scope_id at 24.
            Address.TryWriteBytes(sockaddr.AsSpan(8, 16), out _);
            BinaryPrimitives.WriteUInt32LittleEndian(sockaddr.AsSpan(24), (uint)Address.ScopeId);
        }
        else
        {
            Address.TryWriteBytes(sockaddr.AsSpan(4, 4), out _);
        }

        return sockaddr;
    }

    /// <summary>The address as it appears in a URI.</summary>
    public override string ToString() => new IPEndPoint(Address, Port).ToString();
}
