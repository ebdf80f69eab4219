using Modular.Abstractions.Transports;
using Modular.Transports.Rdma.Interop;

namespace Modular.Transports.Rdma;

/// <summary>One rdma_cm event, copied out before it was acknowledged.</summary>
/// <param name="Type">RDMA_CM_EVENT_*.</param>
/// <param name="Status">The event's status (an errno for error events, a reject reason for REJECTED).</param>
/// <param name="Id">The rdma_cm_id the event is about (a new id for CONNECT_REQUEST).</param>
/// <param name="PrivateData">Up to the first 8 bytes of the peer's private data.</param>
internal readonly record struct CmEvent(int Type, int Status, nint Id, ulong PrivateData)
{
    /// <summary>The event's name as librdmacm spells it.</summary>
    internal string Name => RdmaCm.EventName(Type);
}

/// <summary>
/// Waiting for rdma_cm events. The channel's fd is polled with a short timeout so that cancellation
/// and shutdown are noticed; rdma_get_cm_event is then called only when an event is pending, so it
/// never blocks a thread that someone wants back.
/// </summary>
internal static class ConnectionManagerEvents
{
    /// <summary>How long one poll waits before checking cancellation again.</summary>
    internal const int PollSliceMs = 50;

    /// <summary>Waits for the next event on <paramref name="channel"/>; runs on the caller's (pool) thread.</summary>
    /// <exception cref="OperationCanceledException">The token was cancelled.</exception>
    internal static CmEvent Next(EventChannelHandle channel, CancellationToken cancellationToken)
    {
        while (true)
        {
            cancellationToken.ThrowIfCancellationRequested();
            if (TryNext(channel, PollSliceMs, out CmEvent cmEvent))
            {
                return cmEvent;
            }
        }
    }

    /// <summary>Takes an event if one arrives within <paramref name="timeoutMs"/>.</summary>
    internal static unsafe bool TryNext(EventChannelHandle channel, int timeoutMs, out CmEvent cmEvent)
    {
        cmEvent = default;
        bool added = false;
        channel.DangerousAddRef(ref added);
        try
        {
            var pollFd = new Libc.PollFd { Fd = channel.Fd, Events = Libc.POLLIN };
            // SAFETY: pollFd is a local the call reads and writes.
            int ready = Libc.poll(&pollFd, 1, timeoutMs);
            if (ready == 0 || (ready < 0 && System.Runtime.InteropServices.Marshal.GetLastPInvokeError() == Libc.EINTR))
            {
                return false;
            }

            if (ready < 0)
            {
                throw NativeHandle.LastFailure("poll(rdma_cm event channel)");
            }

            nint eventPointer = 0;
            // SAFETY: the channel is referenced for the duration; eventPointer is a local the call writes.
            if (RdmaCm.rdma_get_cm_event(channel.Pointer, &eventPointer) != 0)
            {
                throw NativeHandle.LastFailure("rdma_get_cm_event");
            }

            // SAFETY: eventPointer is a struct rdma_cm_event* owned by librdmacm until rdma_ack_cm_event;
            // everything needed is copied out before the acknowledgement.
            RdmaCmEvent* raw = (RdmaCmEvent*)eventPointer;
            ulong privateData = 0;
            if (raw->Conn.PrivateData != 0 && raw->Conn.PrivateDataLen >= sizeof(ulong)
                && raw->Event is RdmaCmConstants.RDMA_CM_EVENT_CONNECT_REQUEST or RdmaCmConstants.RDMA_CM_EVENT_ESTABLISHED)
            {
                privateData = *(ulong*)raw->Conn.PrivateData;
            }

            cmEvent = new CmEvent(raw->Event, raw->Status, raw->Id, privateData);
            RdmaCm.rdma_ack_cm_event(eventPointer);
            return true;
        }
        finally
        {
            if (added)
            {
                channel.DangerousRelease();
            }
        }
    }

    /// <summary>Waits for <paramref name="expected"/>; any other event is a failure described with <paramref name="step"/>.</summary>
    /// <exception cref="TransportException">Another event arrived (ADDR_ERROR, REJECTED, UNREACHABLE, ...).</exception>
    internal static CmEvent Expect(EventChannelHandle channel, int expected, string step, CancellationToken cancellationToken)
    {
        CmEvent cmEvent = Next(channel, cancellationToken);
        if (cmEvent.Type != expected)
        {
            string status = cmEvent.Status < 0
                ? $"status {cmEvent.Status} ({System.Runtime.InteropServices.Marshal.GetPInvokeErrorMessage(-cmEvent.Status)})"
                : $"status {cmEvent.Status}";
            throw new TransportException($"{step}: expected {RdmaCm.EventName(expected)}, got {cmEvent.Name} ({status}).");
        }

        return cmEvent;
    }
}
