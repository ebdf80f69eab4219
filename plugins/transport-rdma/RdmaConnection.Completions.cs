using Modular.Abstractions.Transports;
using Modular.Transports.Rdma.Interop;

namespace Modular.Transports.Rdma;

internal sealed partial class RdmaConnection
{
    private const int PollSliceMs = 50;
    private volatile bool _finSeen;
    private volatile bool _peerDisconnected;

    /// <summary>
    /// The completion thread: waits on the completion channel and the rdma_cm channel together (poll with a
    /// short timeout, so DisposeAsync can stop it), and after each completion event re-arms notification
    /// and then drains the CQ: arming before draining closes the race where a completion lands between the
    /// last poll and the re-arm and no event would ever come for it (ibv_req_notify_cq(3)).
    /// </summary>
    private void RunCompletions()
    {
        try
        {
            Drain();
            while (!_stopping)
            {
                (bool completion, bool cmEvent) = Libc.WaitReadable(_pair.CompletionFd, _pair.Id.Channel.Fd, PollSliceMs);
                if (completion)
                {
                    _pair.TakeCompletionEvent();
                    _pair.ArmNotification();
                    Drain();
                }

                if (cmEvent && ConnectionManagerEvents.TryNext(_pair.Id.Channel, 0, out CmEvent cm))
                {
                    OnConnectionEvent(cm);
                }
            }
        }
        catch (Exception e)
        {
            Fail(e as TransportException ?? new TransportException($"The completion thread of {RemoteDescription} failed: {e.Message}", e));
        }
    }

    /// <summary>Polls the CQ until it is empty and dispatches every completion. Completion thread.</summary>
    private void Drain()
    {
        Span<IbvWc> completions = stackalloc IbvWc[16];
        int count;
        do
        {
            count = _pair.Poll(completions);
            for (int i = 0; i < count; i++)
            {
                Dispatch(in completions[i]);
            }
        }
        while (count == completions.Length);
    }

    private void Dispatch(in IbvWc wc)
    {
        (WorkKind kind, int slot) = WorkId.Split(wc.WrId);
        if (wc.Status != VerbsConstants.IBV_WC_SUCCESS)
        {
            OnFailedCompletion(kind, slot, wc);
            return;
        }

        switch (kind)
        {
            case WorkKind.Receive:
                (int credits, bool fin) = (wc.WcFlags & VerbsConstants.IBV_WC_WITH_IMM) != 0
                    ? StreamLayout.DecodeImmediate(wc.ImmData)
                    : (0, false);
                OnCreditsReturned(credits);
                _finSeen |= fin;
                _received.Writer.TryWrite(new ReceivedMessage(slot, (int)wc.ByteLen, fin));
                break;
            case WorkKind.Send:
                OnSendCompleted(slot);
                break;
            case WorkKind.CreditUpdate:
                OnSendCompleted(-1);
                break;
            case WorkKind.Read:
                OnReadCompleted(slot, null);
                break;
            default:
                Fail(new TransportException($"{RemoteDescription}: completion with unknown work request id 0x{wc.WrId:x} on QP {_pair.Number}."));
                break;
        }
    }

    /// <summary>
    /// A work request failed. After a disconnect or abort the QP is in the error state and every
    /// outstanding request completes with IBV_WC_WR_FLUSH_ERR: expected, only the bookkeeping matters.
    /// Any other status means the QP has failed (it is in the error state now, ibv_poll_cq(3)).
    /// </summary>
    private void OnFailedCompletion(WorkKind kind, int slot, in IbvWc wc)
    {
        bool expected = wc.Status == VerbsConstants.IBV_WC_WR_FLUSH_ERR && (_failure is not null || _peerDisconnected || _stopping);
        TransportException error = new(
            $"{RemoteDescription}: {kind} work request on QP {_pair.Number} failed: {Verbs.StatusText(wc.Status)} " +
            $"(status {wc.Status}, vendor error 0x{wc.VendorErr:x}).");
        if (kind == WorkKind.Read)
        {
            OnReadCompleted(slot, _failure ?? error);
        }
        else if (kind is WorkKind.Send or WorkKind.CreditUpdate)
        {
            OnSendCompleted(kind == WorkKind.Send ? slot : -1);
        }

        if (!expected)
        {
            Fail(error);
        }
    }

    /// <summary>An rdma_cm event on the connected id. Completion thread.</summary>
    private void OnConnectionEvent(CmEvent cm)
    {
        switch (cm.Type)
        {
            case RdmaCmConstants.RDMA_CM_EVENT_DISCONNECTED:
                _peerDisconnected = true;
                // Receives that completed before the disconnect are delivered first.
                Drain();
                if (_finSeen)
                {
                    // A clean end: the input still delivers what is queued, only sending stops.
                    _received.Writer.TryComplete();
                    _sendStop.Cancel();
                    _closed.Cancel();
                }
                else
                {
                    Fail(new TransportException($"The peer {RemoteDescription} disconnected (RDMA_CM_EVENT_DISCONNECTED) before the end of the stream."));
                }

                break;
            case RdmaCmConstants.RDMA_CM_EVENT_DEVICE_REMOVAL:
                Fail(new TransportException($"The RDMA device under {RemoteDescription} was removed (RDMA_CM_EVENT_DEVICE_REMOVAL)."));
                break;
            default:
                // TIMEWAIT_EXIT and the like carry nothing for the stream.
                break;
        }
    }
}
