namespace Modular.Transports.Rdma.Interop;

/// <summary>
/// The data-path verbs. In <c>verbs.h</c> <c>ibv_post_send</c>, <c>ibv_post_recv</c>, <c>ibv_poll_cq</c> and
/// <c>ibv_req_notify_cq</c> are static inline functions that call the provider through
/// <c>qp-&gt;context-&gt;ops</c> / <c>cq-&gt;context-&gt;ops</c>; libibverbs exports no such symbols. These do the
/// same: read the object's context pointer, read the function pointer from the ops table at the offset
/// the ABI test checks, and call it. The functions are thread-safe in rdma-core's providers, but the
/// transport still posts sends from one place at a time (see RdmaConnection.Send.cs).
/// </summary>
internal static unsafe class VerbsOps
{
    /// <summary>ibv_post_send: returns 0 or an errno value (not -1).</summary>
    internal static int PostSend(nint qp, IbvSendWr* wr, IbvSendWr** badWr)
    {
        // SAFETY: qp is a live struct ibv_qp* (the caller holds a reference on its SafeHandle); its
        // context and the context's ops table live as long as the QP; the offsets are ABI-tested.
        nint context = *(nint*)(qp + VerbsLayout.QpContext);
        var fn = (delegate* unmanaged<nint, IbvSendWr*, IbvSendWr**, int>)(*(nint*)(context + VerbsLayout.ContextPostSend));
        return fn(qp, wr, badWr);
    }

    /// <summary>ibv_post_recv: returns 0 or an errno value (not -1).</summary>
    internal static int PostRecv(nint qp, IbvRecvWr* wr, IbvRecvWr** badWr)
    {
        // SAFETY: as in PostSend; the work request and its scatter list are read before the call returns.
        nint context = *(nint*)(qp + VerbsLayout.QpContext);
        var fn = (delegate* unmanaged<nint, IbvRecvWr*, IbvRecvWr**, int>)(*(nint*)(context + VerbsLayout.ContextPostRecv));
        return fn(qp, wr, badWr);
    }

    /// <summary>ibv_poll_cq: the number of completions written to <paramref name="wc"/>, or negative on error.</summary>
    internal static int PollCq(nint cq, int count, IbvWc* wc)
    {
        // SAFETY: cq is a live struct ibv_cq*; wc points at room for count completions.
        nint context = *(nint*)(cq + VerbsLayout.CqContext);
        var fn = (delegate* unmanaged<nint, int, IbvWc*, int>)(*(nint*)(context + VerbsLayout.ContextPollCq));
        return fn(cq, count, wc);
    }

    /// <summary>ibv_req_notify_cq: 0, or an errno value.</summary>
    internal static int ReqNotifyCq(nint cq, bool solicitedOnly)
    {
        // SAFETY: cq is a live struct ibv_cq*; its context's ops table is valid while it lives.
        nint context = *(nint*)(cq + VerbsLayout.CqContext);
        var fn = (delegate* unmanaged<nint, int, int>)(*(nint*)(context + VerbsLayout.ContextReqNotifyCq));
        return fn(cq, solicitedOnly ? 1 : 0);
    }
}
