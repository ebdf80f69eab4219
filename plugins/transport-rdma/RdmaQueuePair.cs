using Modular.Abstractions.Transports;
using Modular.Transports.Rdma.Interop;

namespace Modular.Transports.Rdma;

/// <summary>
/// The verbs objects of one connection: protection domain, completion channel and queue, the RC queue
/// pair on the rdma_cm id, and the registered receive, send and staging buffers. Posting work requests
/// and polling completions go through here; the connection decides when.
/// Thread use: <see cref="PostReceive"/> from the delivery task, <see cref="PostSend"/> and
/// <see cref="PostRead"/> under the connection's send lock, <see cref="Poll"/> and
/// <see cref="TakeCompletionEvent"/> from the completion thread only.
/// </summary>
internal sealed unsafe class RdmaQueuePair : IDisposable
{
    private readonly ProtectionDomainHandle _pd;
    private readonly CompletionChannelHandle _channel;
    private readonly CompletionQueueHandle _cq;
    private readonly QueuePairHandle _qp;
    private readonly NativeBufferHandle _receiveBuffer;
    private readonly MemoryRegionHandle _receiveRegion;
    private readonly NativeBufferHandle _sendBuffer;
    private readonly MemoryRegionHandle _sendRegion;
    private readonly NativeBufferHandle _stagingBuffer;
    private readonly MemoryRegionHandle _stagingRegion;

    private RdmaQueuePair(CmIdHandle id)
    {
        Id = id;
        _pd = ProtectionDomainHandle.Allocate(id);
        _channel = CompletionChannelHandle.Create(id);
        _cq = CompletionQueueHandle.Create(id, _channel, StreamLayout.CompletionQueueDepth);
        _qp = QueuePairHandle.Create(id, _pd, _cq, StreamLayout.SendQueueDepth, StreamLayout.ReceiveSlots);

        const int local = VerbsConstants.IBV_ACCESS_LOCAL_WRITE;
        _receiveBuffer = NativeBufferHandle.Allocate((nuint)(StreamLayout.ReceiveSlots * StreamLayout.SlotSize));
        _receiveRegion = MemoryRegionHandle.Register(_pd, _receiveBuffer.Pointer, _receiveBuffer.Length, local, _receiveBuffer);
        _sendBuffer = NativeBufferHandle.Allocate((nuint)(StreamLayout.SendSlots * StreamLayout.SlotSize));
        _sendRegion = MemoryRegionHandle.Register(_pd, _sendBuffer.Pointer, _sendBuffer.Length, local, _sendBuffer);
        _stagingBuffer = NativeBufferHandle.Allocate((nuint)(StreamLayout.ReadSlots * StreamLayout.ReadSlotSize));
        _stagingRegion = MemoryRegionHandle.Register(_pd, _stagingBuffer.Pointer, _stagingBuffer.Length, local, _stagingBuffer);
    }

    /// <summary>The rdma_cm id the QP belongs to (owned by this object from creation on).</summary>
    internal CmIdHandle Id { get; }

    /// <summary>The completion channel's fd, readable when <see cref="TakeCompletionEvent"/> has an event.</summary>
    internal int CompletionFd => _channel.Fd;

    /// <summary>The queue pair number, for logs and errors.</summary>
    internal uint Number => _qp.Number;

    /// <summary>
    /// Creates the QP and buffers on a resolved (connecting side) or requested (listening side) id, posts
    /// every receive slot and arms the completion notification, all before rdma_connect or rdma_accept so
    /// the peer's first sends find receives posted. Disposes the id when it fails.
    /// </summary>
    internal static RdmaQueuePair Create(CmIdHandle id)
    {
        RdmaQueuePair? pair = null;
        try
        {
            pair = new RdmaQueuePair(id);
            for (int slot = 0; slot < StreamLayout.ReceiveSlots; slot++)
            {
                pair.PostReceive(slot);
            }

            pair.ArmNotification();
            return pair;
        }
        catch
        {
            if (pair is null)
            {
                id.Dispose();
            }
            else
            {
                pair.Dispose();
            }

            throw;
        }
    }

    /// <summary>A receive slot's bytes (valid between its completion and its re-post).</summary>
    internal ReadOnlySpan<byte> ReceiveSlot(int slot, int length)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThan((uint)length, (uint)StreamLayout.SlotSize);
        // SAFETY: the slot lies inside the receive buffer, which outlives every caller (Dispose runs last).
        return new((void*)(_receiveBuffer.Pointer + (slot * StreamLayout.SlotSize)), length);
    }

    /// <summary>A send slot, to fill before <see cref="PostSend"/>.</summary>
    internal Span<byte> SendSlot(int slot)
    {
        // SAFETY: the slot lies inside the send buffer, which outlives every caller (Dispose runs last).
        return new((void*)(_sendBuffer.Pointer + (slot * StreamLayout.SlotSize)), StreamLayout.SlotSize);
    }

    /// <summary>The address of a staging slot, where a completed RDMA READ has landed.</summary>
    internal nint StagingSlot(int slot) => _stagingBuffer.Pointer + (slot * StreamLayout.ReadSlotSize);

    /// <summary>Posts receive slot <paramref name="slot"/>.</summary>
    internal void PostReceive(int slot)
    {
        var sge = new IbvSge
        {
            Addr = (ulong)(_receiveBuffer.Pointer + (slot * StreamLayout.SlotSize)),
            Length = StreamLayout.SlotSize,
            Lkey = _receiveRegion.Lkey,
        };
        var wr = new IbvRecvWr { WrId = WorkId.Make(WorkKind.Receive, slot), SgList = &sge, NumSge = 1 };
        IbvRecvWr* bad = null;
        // SAFETY: wr and sge are locals read during the call; the slot lies inside the registered receive
        // buffer, which lives as long as this object; the QP is alive until Dispose.
        int error = VerbsOps.PostRecv(_qp.Pointer, &wr, &bad);
        if (error != 0)
        {
            throw NativeHandle.Failure($"ibv_post_recv(slot {slot}) on QP {Number}", error);
        }
    }

    /// <summary>
    /// Posts a signalled SEND_WITH_IMM of <paramref name="length"/> bytes from send slot
    /// <paramref name="slot"/> (or, with slot -1, a payload-less credit update).
    /// </summary>
    internal void PostSend(int slot, int length, uint immData)
    {
        var sge = new IbvSge
        {
            Addr = (ulong)(_sendBuffer.Pointer + (Math.Max(slot, 0) * StreamLayout.SlotSize)),
            Length = (uint)length,
            Lkey = _sendRegion.Lkey,
        };
        var wr = new IbvSendWr
        {
            WrId = slot < 0 ? WorkId.Make(WorkKind.CreditUpdate, 0) : WorkId.Make(WorkKind.Send, slot),
            SgList = length > 0 ? &sge : null,
            NumSge = length > 0 ? 1 : 0,
            Opcode = VerbsConstants.IBV_WR_SEND_WITH_IMM,
            SendFlags = VerbsConstants.IBV_SEND_SIGNALED,
            ImmData = immData,
        };
        IbvSendWr* bad = null;
        // SAFETY: wr and sge are locals read during the call; the payload stays in the registered send
        // slot until the send completes (the slot is only reused after its completion).
        int error = VerbsOps.PostSend(_qp.Pointer, &wr, &bad);
        if (error != 0)
        {
            throw NativeHandle.Failure($"ibv_post_send(SEND_WITH_IMM, {length} bytes) on QP {Number}", error);
        }
    }

    /// <summary>Posts a signalled RDMA READ of <paramref name="length"/> bytes at <paramref name="remoteAddress"/> into staging slot <paramref name="slot"/>.</summary>
    internal void PostRead(int slot, ulong remoteAddress, uint rkey, int length)
    {
        var sge = new IbvSge { Addr = (ulong)StagingSlot(slot), Length = (uint)length, Lkey = _stagingRegion.Lkey };
        var wr = new IbvSendWr
        {
            WrId = WorkId.Make(WorkKind.Read, slot),
            SgList = &sge,
            NumSge = 1,
            Opcode = VerbsConstants.IBV_WR_RDMA_READ,
            SendFlags = VerbsConstants.IBV_SEND_SIGNALED,
            RdmaRemoteAddr = remoteAddress,
            RdmaRkey = rkey,
        };
        IbvSendWr* bad = null;
        // SAFETY: locals read during the call; the staging slot is registered with LOCAL_WRITE and
        // reserved for this read until its completion.
        int error = VerbsOps.PostSend(_qp.Pointer, &wr, &bad);
        if (error != 0)
        {
            throw NativeHandle.Failure($"ibv_post_send(RDMA_READ, {length} bytes at 0x{remoteAddress:x}) on QP {Number}", error);
        }
    }

    /// <summary>Registers memory for the page channel (REMOTE_READ) on this connection's PD.</summary>
    internal MemoryRegionHandle RegisterForRemoteRead(nint address, ulong length) =>
        MemoryRegionHandle.Register(_pd, address, (nuint)length,
            VerbsConstants.IBV_ACCESS_LOCAL_WRITE | VerbsConstants.IBV_ACCESS_REMOTE_READ, buffer: null);

    /// <summary>Asks for an event on the completion channel when the next completion arrives.</summary>
    internal void ArmNotification()
    {
        int error = VerbsOps.ReqNotifyCq(_cq.Pointer, solicitedOnly: false);
        if (error != 0)
        {
            throw NativeHandle.Failure($"ibv_req_notify_cq on QP {Number}", error);
        }
    }

    /// <summary>Takes and acknowledges one completion event (the channel fd was readable). Completion thread.</summary>
    internal void TakeCompletionEvent()
    {
        nint cq = 0;
        nint context = 0;
        // SAFETY: locals the call writes; the channel is alive until Dispose, which runs after the completion thread ends.
        if (Verbs.ibv_get_cq_event(_channel.Pointer, &cq, &context) != 0)
        {
            throw NativeHandle.LastFailure($"ibv_get_cq_event on QP {Number}");
        }

        // Acknowledged at once, so ibv_destroy_cq never waits for an unacknowledged event.
        Verbs.ibv_ack_cq_events(cq, 1);
    }

    /// <summary>Polls up to <paramref name="completions"/>.Length completions. Completion thread.</summary>
    internal int Poll(Span<IbvWc> completions)
    {
        fixed (IbvWc* wc = completions)
        {
            // SAFETY: wc points at completions.Length writable entries, pinned for the call.
            int count = VerbsOps.PollCq(_cq.Pointer, completions.Length, wc);
            if (count < 0)
            {
                throw new TransportException($"ibv_poll_cq on QP {Number} failed ({count}).");
            }

            return count;
        }
    }

    /// <summary>Starts a disconnect (the peer gets RDMA_CM_EVENT_DISCONNECTED; outstanding work requests flush).</summary>
    internal void Disconnect() => RdmaCm.rdma_disconnect(Id.Pointer);

    /// <summary>Destroys everything; the completion thread must have ended. Children go before parents (the handles reference their parents).</summary>
    public void Dispose()
    {
        _qp.Dispose();
        _stagingRegion.Dispose();
        _sendRegion.Dispose();
        _receiveRegion.Dispose();
        _stagingBuffer.Dispose();
        _sendBuffer.Dispose();
        _receiveBuffer.Dispose();
        _cq.Dispose();
        _channel.Dispose();
        _pd.Dispose();
        Id.Dispose();
        Id.Channel.Dispose();
    }
}
