namespace Modular.Transports.Rdma.Interop;

/// <summary>An rdma_cm event channel (rdma_create_event_channel / rdma_destroy_event_channel).</summary>
internal sealed class EventChannelHandle : NativeHandle
{
    private EventChannelHandle() { }

    /// <summary>The channel's file descriptor, readable when a connection-manager event is pending.</summary>
    internal int Fd { get; private set; }

    internal static unsafe EventChannelHandle Create()
    {
        nint channel = RdmaCm.rdma_create_event_channel();
        if (channel == 0)
        {
            throw LastFailure("rdma_create_event_channel");
        }

        var handle = new EventChannelHandle();
        // SAFETY: channel is the struct rdma_event_channel* just returned; fd is at an ABI-tested offset.
        handle.Fd = *(int*)(channel + RdmaCmLayout.EventChannelFd);
        handle.Adopt(channel);
        return handle;
    }

    protected override bool Free(nint pointer)
    {
        RdmaCm.rdma_destroy_event_channel(pointer);
        return true;
    }
}

/// <summary>An rdma_cm communication identifier (rdma_create_id, or a CONNECT_REQUEST's new id; rdma_destroy_id).</summary>
internal sealed class CmIdHandle : NativeHandle
{
    private EventChannelHandle _channel = null!;

    private CmIdHandle() { }

    /// <summary>The event channel that currently receives this id's events.</summary>
    internal EventChannelHandle Channel => _channel;

    /// <summary>The struct ibv_context* the id is bound to (set once the address is resolved or bound to an RDMA device).</summary>
    internal unsafe nint VerbsContext
    {
        get
        {
            // SAFETY: the id is alive while this handle is; verbs is a plain pointer field at an ABI-tested offset.
            nint context = *(nint*)(Pointer + RdmaCmLayout.IdVerbs);
            if (context == 0)
            {
                throw new InvalidOperationException("The rdma_cm id is not bound to an RDMA device yet.");
            }

            return context;
        }
    }

    /// <summary>The struct ibv_qp* rdma_create_qp attached to the id (0 before).</summary>
    internal unsafe nint QueuePair
    {
        get
        {
            // SAFETY: as for VerbsContext.
            return *(nint*)(Pointer + RdmaCmLayout.IdQp);
        }
    }

    /// <summary>
    /// The peer's address and port. rdma_get_peer_addr is a static inline in rdma_cma.h returning
    /// <c>&amp;id-&gt;route.addr.dst_addr</c>; this reads the same field (offset ABI-tested).
    /// </summary>
    internal unsafe System.Net.IPEndPoint? PeerAddress
    {
        get
        {
            // SAFETY: the id is alive; dst_addr is a sockaddr_storage-sized union inside the id, read as
            // sockaddr_in or sockaddr_in6 according to its family.
            byte* sockaddr = (byte*)(Pointer + RdmaCmLayout.IdPeerAddress);
            ushort family = *(ushort*)sockaddr;
            int port = System.Buffers.Binary.BinaryPrimitives.ReverseEndianness(*(ushort*)(sockaddr + 2));
            return family switch
            {
                RdmaCmConstants.AF_INET => new System.Net.IPEndPoint(new System.Net.IPAddress(new ReadOnlySpan<byte>(sockaddr + 4, 4)), port),
                RdmaCmConstants.AF_INET6 => new System.Net.IPEndPoint(new System.Net.IPAddress(new ReadOnlySpan<byte>(sockaddr + 8, 16), *(uint*)(sockaddr + 24)), port),
                _ => null,
            };
        }
    }

    internal static unsafe CmIdHandle Create(EventChannelHandle channel)
    {
        nint id = 0;
        // SAFETY: id is a local the call writes.
        if (RdmaCm.rdma_create_id(channel.Pointer, &id, 0, RdmaCmConstants.RDMA_PS_TCP) != 0)
        {
            throw LastFailure("rdma_create_id");
        }

        return Own(id, channel);
    }

    /// <summary>Takes ownership of an id delivered by a CONNECT_REQUEST event on <paramref name="channel"/>.</summary>
    internal static CmIdHandle Own(nint id, EventChannelHandle channel)
    {
        var handle = new CmIdHandle { _channel = channel };
        handle.Adopt(id, channel);
        return handle;
    }

    /// <summary>Moves the id's events to <paramref name="channel"/> (rdma_migrate_id); every event of the id must be acknowledged first.</summary>
    internal void MigrateTo(EventChannelHandle channel)
    {
        if (RdmaCm.rdma_migrate_id(Pointer, channel.Pointer) != 0)
        {
            throw LastFailure("rdma_migrate_id");
        }

        ReplaceParent(_channel, channel);
        _channel = channel;
    }

    /// <summary>rdma_resolve_addr: starts resolving <paramref name="sockaddr"/>; RDMA_CM_EVENT_ADDR_RESOLVED follows.</summary>
    internal unsafe void ResolveAddress(byte[] sockaddr, int timeoutMs)
    {
        fixed (byte* destination = sockaddr)
        {
            // SAFETY: destination is a pinned sockaddr_in/sockaddr_in6 the call copies before returning.
            if (RdmaCm.rdma_resolve_addr(Pointer, null, destination, timeoutMs) != 0)
            {
                throw LastFailure("rdma_resolve_addr");
            }
        }
    }

    /// <summary>rdma_resolve_route: RDMA_CM_EVENT_ROUTE_RESOLVED follows.</summary>
    internal void ResolveRoute(int timeoutMs)
    {
        if (RdmaCm.rdma_resolve_route(Pointer, timeoutMs) != 0)
        {
            throw LastFailure("rdma_resolve_route");
        }
    }

    /// <summary>rdma_bind_addr on <paramref name="sockaddr"/>.</summary>
    internal unsafe void Bind(byte[] sockaddr)
    {
        fixed (byte* address = sockaddr)
        {
            // SAFETY: address is a pinned sockaddr the call copies before returning.
            if (RdmaCm.rdma_bind_addr(Pointer, address) != 0)
            {
                throw LastFailure("rdma_bind_addr");
            }
        }
    }

    /// <summary>rdma_listen; CONNECT_REQUEST events follow.</summary>
    internal void Listen(int backlog)
    {
        if (RdmaCm.rdma_listen(Pointer, backlog) != 0)
        {
            throw LastFailure("rdma_listen");
        }
    }

    /// <summary>The bound local port (rdma_get_src_port returns it in network byte order).</summary>
    internal int LocalPort => System.Buffers.Binary.BinaryPrimitives.ReverseEndianness(RdmaCm.rdma_get_src_port(Pointer));

    /// <summary>rdma_connect (<paramref name="accept"/> false) or rdma_accept (true) with the transport's parameters.</summary>
    /// <param name="privateData">Eight bytes the peer sees in its CONNECT_REQUEST or ESTABLISHED event.</param>
    /// <param name="readDepth">Outstanding RDMA READs in each direction (initiator depth and responder resources).</param>
    /// <param name="accept">True on the listening side.</param>
    internal unsafe void ConnectOrAccept(ulong privateData, byte readDepth, bool accept)
    {
        ulong data = privateData;
        var param = new RdmaConnParam
        {
            PrivateData = (nint)(&data),
            PrivateDataLen = sizeof(ulong),
            ResponderResources = readDepth,
            InitiatorDepth = readDepth,
            RetryCount = 7,
            // 7 = retry forever on RNR NAK; credits should make RNR impossible, this keeps a slow
            // receiver from turning into a fatal error if they ever do not.
            RnrRetryCount = 7,
        };
        // SAFETY: param and data are locals; librdmacm copies the private data into the request.
        int result = accept ? RdmaCm.rdma_accept(Pointer, &param) : RdmaCm.rdma_connect(Pointer, &param);
        if (result != 0)
        {
            throw LastFailure(accept ? "rdma_accept" : "rdma_connect");
        }
    }

    /// <summary>rdma_reject: refuses a CONNECT_REQUEST (the peer gets RDMA_CM_EVENT_REJECTED).</summary>
    internal void Reject() => RdmaCm.rdma_reject(Pointer, 0, 0);

    protected override bool Free(nint pointer) => RdmaCm.rdma_destroy_id(pointer) == 0;
}

/// <summary>The RC queue pair rdma_create_qp attaches to an id (destroyed with rdma_destroy_qp).</summary>
internal sealed class QueuePairHandle : NativeHandle
{
    private CmIdHandle _id = null!;

    private QueuePairHandle() { }

    /// <summary>Creates an RC QP on <paramref name="id"/> using <paramref name="cq"/> for sends and receives.</summary>
    internal static unsafe QueuePairHandle Create(CmIdHandle id, ProtectionDomainHandle pd, CompletionQueueHandle cq, uint maxSendWr, uint maxRecvWr)
    {
        var attr = new IbvQpInitAttr
        {
            SendCq = cq.Pointer,
            RecvCq = cq.Pointer,
            QpType = VerbsConstants.IBV_QPT_RC,
            SqSigAll = 0,
            Cap = new IbvQpCap { MaxSendWr = maxSendWr, MaxRecvWr = maxRecvWr, MaxSendSge = 1, MaxRecvSge = 1 },
        };
        // SAFETY: attr is a local the call reads (and updates with the actual capabilities).
        if (RdmaCm.rdma_create_qp(id.Pointer, pd.Pointer, &attr) != 0)
        {
            throw LastFailure($"rdma_create_qp(RC, {maxSendWr} send / {maxRecvWr} receive work requests)");
        }

        var handle = new QueuePairHandle { _id = id };
        handle.Adopt(id.QueuePair, id, pd, cq);
        return handle;
    }

    /// <summary>The queue pair number, for logs.</summary>
    internal unsafe uint Number
    {
        get
        {
            // SAFETY: the QP is alive while this handle is; qp_num is at an ABI-tested offset.
            return *(uint*)(Pointer + VerbsLayout.QpNum);
        }
    }

    protected override bool Free(nint pointer)
    {
        RdmaCm.rdma_destroy_qp(_id.Pointer);
        return true;
    }
}
