using System.Runtime.InteropServices;

namespace Modular.Transports.Rdma.Interop;

// Layouts of the verbs.h structs the transport marshals (x86-64, rdma-core 44). Only the fields the
// transport touches are named; explicit offsets and sizes are checked against the real header by
// tests/Modular.Transport.Rdma.Tests/AbiTests.cs.

/// <summary>struct ibv_sge: one scatter/gather element.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct IbvSge
{
    internal ulong Addr;
    internal uint Length;
    internal uint Lkey;
}

/// <summary>struct ibv_send_wr, with the <c>wr.rdma</c> arm of its union flattened.</summary>
[StructLayout(LayoutKind.Explicit, Size = 128)]
internal unsafe struct IbvSendWr
{
    [FieldOffset(0)] internal ulong WrId;
    [FieldOffset(8)] internal IbvSendWr* Next;
    [FieldOffset(16)] internal IbvSge* SgList;
    [FieldOffset(24)] internal int NumSge;
    [FieldOffset(28)] internal int Opcode;
    [FieldOffset(32)] internal uint SendFlags;
    /// <summary>imm_data, network byte order.</summary>
    [FieldOffset(36)] internal uint ImmData;
    /// <summary>wr.rdma.remote_addr</summary>
    [FieldOffset(40)] internal ulong RdmaRemoteAddr;
    /// <summary>wr.rdma.rkey</summary>
    [FieldOffset(48)] internal uint RdmaRkey;
}

/// <summary>struct ibv_recv_wr.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct IbvRecvWr
{
    internal ulong WrId;
    internal IbvRecvWr* Next;
    internal IbvSge* SgList;
    internal int NumSge;
}

/// <summary>struct ibv_wc: one work completion.</summary>
[StructLayout(LayoutKind.Explicit, Size = 48)]
internal struct IbvWc
{
    [FieldOffset(0)] internal ulong WrId;
    [FieldOffset(8)] internal int Status;
    [FieldOffset(12)] internal int Opcode;
    [FieldOffset(16)] internal uint VendorErr;
    [FieldOffset(20)] internal uint ByteLen;
    /// <summary>imm_data, network byte order, valid when <c>WcFlags &amp; IBV_WC_WITH_IMM</c>.</summary>
    [FieldOffset(24)] internal uint ImmData;
    [FieldOffset(28)] internal uint QpNum;
    [FieldOffset(32)] internal uint SrcQp;
    [FieldOffset(36)] internal uint WcFlags;
}

/// <summary>struct ibv_qp_cap.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct IbvQpCap
{
    internal uint MaxSendWr;
    internal uint MaxRecvWr;
    internal uint MaxSendSge;
    internal uint MaxRecvSge;
    internal uint MaxInlineData;
}

/// <summary>struct ibv_qp_init_attr.</summary>
[StructLayout(LayoutKind.Explicit, Size = 64)]
internal struct IbvQpInitAttr
{
    [FieldOffset(0)] internal nint QpContext;
    [FieldOffset(8)] internal nint SendCq;
    [FieldOffset(16)] internal nint RecvCq;
    [FieldOffset(24)] internal nint Srq;
    [FieldOffset(32)] internal IbvQpCap Cap;
    [FieldOffset(52)] internal int QpType;
    [FieldOffset(56)] internal int SqSigAll;
}

/// <summary>Field offsets inside opaque verbs objects that the transport reads through a pointer.</summary>
internal static class VerbsLayout
{
    /// <summary>offsetof(struct ibv_context, ops.poll_cq)</summary>
    internal const int ContextPollCq = 96;
    /// <summary>offsetof(struct ibv_context, ops.req_notify_cq)</summary>
    internal const int ContextReqNotifyCq = 104;
    /// <summary>offsetof(struct ibv_context, ops.post_send)</summary>
    internal const int ContextPostSend = 208;
    /// <summary>offsetof(struct ibv_context, ops.post_recv)</summary>
    internal const int ContextPostRecv = 216;
    /// <summary>offsetof(struct ibv_qp, context)</summary>
    internal const int QpContext = 0;
    /// <summary>offsetof(struct ibv_qp, qp_num)</summary>
    internal const int QpNum = 52;
    /// <summary>offsetof(struct ibv_cq, context)</summary>
    internal const int CqContext = 0;
    /// <summary>offsetof(struct ibv_comp_channel, fd)</summary>
    internal const int CompChannelFd = 8;
    /// <summary>offsetof(struct ibv_mr, lkey)</summary>
    internal const int MrLkey = 36;
    /// <summary>offsetof(struct ibv_mr, rkey)</summary>
    internal const int MrRkey = 40;
}

/// <summary>verbs.h constants the transport uses.</summary>
internal static class VerbsConstants
{
    internal const int IBV_ACCESS_LOCAL_WRITE = 1;
    internal const int IBV_ACCESS_REMOTE_WRITE = 1 << 1;
    internal const int IBV_ACCESS_REMOTE_READ = 1 << 2;

    internal const int IBV_WR_RDMA_WRITE = 0;
    internal const int IBV_WR_SEND = 2;
    internal const int IBV_WR_SEND_WITH_IMM = 3;
    internal const int IBV_WR_RDMA_READ = 4;

    internal const uint IBV_SEND_SIGNALED = 1 << 1;

    internal const int IBV_WC_SUCCESS = 0;
    internal const int IBV_WC_WR_FLUSH_ERR = 5;

    internal const int IBV_WC_SEND = 0;
    internal const int IBV_WC_RDMA_READ = 2;
    internal const int IBV_WC_RECV = 1 << 7;

    internal const uint IBV_WC_WITH_IMM = 1 << 1;

    internal const int IBV_QPT_RC = 2;
}
