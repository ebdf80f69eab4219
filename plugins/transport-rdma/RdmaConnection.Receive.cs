using System.IO.Pipelines;
using Modular.Abstractions.Transports;

namespace Modular.Transports.Rdma;

internal sealed partial class RdmaConnection
{
    /// <summary>
    /// Delivery task (a pool task): copies each received message into the input pipe in arrival order
    /// (RC delivers messages in order and receives complete in the order they were posted), re-posts the
    /// slot and owes the peer a credit for it. Waiting on the pipe's flush is the backpressure: slots are
    /// not re-posted while the reader is behind, so the peer runs out of credits instead of memory.
    /// Completes the input writer: normally after FIN, with the failure otherwise.
    /// </summary>
    private async Task DeliverAsync()
    {
        PipeWriter writer = _input.Writer;
        Exception? error = null;
        bool readerGone = false;
        try
        {
            while (await _received.Reader.WaitToReadAsync(_abort.Token).ConfigureAwait(false))
            {
                while (_received.Reader.TryRead(out ReceivedMessage message))
                {
                    if (message.Length > 0 && !readerGone)
                    {
                        _pair.ReceiveSlot(message.Slot, message.Length).CopyTo(writer.GetSpan(message.Length));
                        writer.Advance(message.Length);
                    }

                    lock (_sendLock)
                    {
                        _pair.PostReceive(message.Slot);
                        _owed++;
                        TrySendCreditUpdateLocked();
                    }

                    WakeSendPump();
                    if (message.Fin)
                    {
                        await writer.CompleteAsync().ConfigureAwait(false);
                        return;
                    }

                    if (!readerGone)
                    {
                        FlushResult flushed = await writer.FlushAsync(_abort.Token).ConfigureAwait(false);
                        // The application stopped reading: keep re-posting so the peer is never stuck
                        // without credits, but drop the bytes.
                        readerGone = flushed.IsCompleted;
                    }
                }
            }
        }
        catch (Exception e)
        {
            error = _failure ?? new TransportException($"Receiving from {RemoteDescription} failed: {e.Message}", e);
            if (_failure is null)
            {
                Fail(error);
            }
        }

        error ??= _failure ?? new TransportException($"The migration connection {RemoteDescription} ended without an end-of-stream marker.");
        await writer.CompleteAsync(error).ConfigureAwait(false);
    }
}
