using System.Runtime.InteropServices;

namespace Modular.Transports.Rdma.Interop;

/// <summary>struct rdma_conn_param.</summary>
[StructLayout(LayoutKind.Explicit, Size = 24)]
internal struct RdmaConnParam
{
    [FieldOffset(0)] internal nint PrivateData;
    [FieldOffset(8)] internal byte PrivateDataLen;
    [FieldOffset(9)] internal byte ResponderResources;
    [FieldOffset(10)] internal byte InitiatorDepth;
    [FieldOffset(11)] internal byte FlowControl;
    [FieldOffset(12)] internal byte RetryCount;
    [FieldOffset(13)] internal byte RnrRetryCount;
    [FieldOffset(14)] internal byte Srq;
    [FieldOffset(16)] internal uint QpNum;
}

/// <summary>struct rdma_cm_event, read through the pointer rdma_get_cm_event returns (never allocated here).</summary>
[StructLayout(LayoutKind.Explicit)]
internal struct RdmaCmEvent
{
    [FieldOffset(0)] internal nint Id;
    [FieldOffset(8)] internal nint ListenId;
    [FieldOffset(16)] internal int Event;
    [FieldOffset(20)] internal int Status;
    /// <summary>param.conn (valid for connection events).</summary>
    [FieldOffset(24)] internal RdmaConnParam Conn;
}

/// <summary>Field offsets inside struct rdma_cm_id and struct rdma_event_channel.</summary>
internal static class RdmaCmLayout
{
    /// <summary>offsetof(struct rdma_cm_id, verbs)</summary>
    internal const int IdVerbs = 0;
    /// <summary>offsetof(struct rdma_cm_id, qp)</summary>
    internal const int IdQp = 24;
    /// <summary>offsetof(struct rdma_cm_id, route.addr.dst_addr): what the inline rdma_get_peer_addr returns.</summary>
    internal const int IdPeerAddress = 160;
    /// <summary>offsetof(struct rdma_event_channel, fd)</summary>
    internal const int EventChannelFd = 0;
    /// <summary>sizeof(struct sockaddr_in)</summary>
    internal const int SockaddrIn = 16;
    /// <summary>sizeof(struct sockaddr_in6)</summary>
    internal const int SockaddrIn6 = 28;
}

/// <summary>rdma_cma.h and socket constants the transport uses.</summary>
internal static class RdmaCmConstants
{
    internal const int RDMA_PS_TCP = 0x0106;

    internal const int RDMA_CM_EVENT_ADDR_RESOLVED = 0;
    internal const int RDMA_CM_EVENT_ADDR_ERROR = 1;
    internal const int RDMA_CM_EVENT_ROUTE_RESOLVED = 2;
    internal const int RDMA_CM_EVENT_ROUTE_ERROR = 3;
    internal const int RDMA_CM_EVENT_CONNECT_REQUEST = 4;
    internal const int RDMA_CM_EVENT_CONNECT_RESPONSE = 5;
    internal const int RDMA_CM_EVENT_CONNECT_ERROR = 6;
    internal const int RDMA_CM_EVENT_UNREACHABLE = 7;
    internal const int RDMA_CM_EVENT_REJECTED = 8;
    internal const int RDMA_CM_EVENT_ESTABLISHED = 9;
    internal const int RDMA_CM_EVENT_DISCONNECTED = 10;
    internal const int RDMA_CM_EVENT_DEVICE_REMOVAL = 11;
    internal const int RDMA_CM_EVENT_TIMEWAIT_EXIT = 15;

    internal const ushort AF_INET = 2;
    internal const ushort AF_INET6 = 10;
}
