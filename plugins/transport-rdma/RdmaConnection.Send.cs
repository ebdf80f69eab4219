using System.Buffers;
using System.IO.Pipelines;
using Modular.Abstractions.Transports;

namespace Modular.Transports.Rdma;

internal sealed partial class RdmaConnection
{
    // Everything below _sendLock is touched by the send pump, the delivery task, the completion thread and
    // page-channel readers; ibv_post_send is only ever called with the lock held, so work requests enter
    // the send queue in the order their credits were taken.
    private readonly Lock _sendLock = new();
    private readonly Stack<int> _freeSendSlots = new();
    private readonly SemaphoreSlim _sendWake = new(0, int.MaxValue);
    private int _credits = StreamLayout.ReceiveSlots;
    private int _owed;
    private int _outstandingSends;

    /// <summary>
    /// Send pump (a pool task): copies the output pipe into send slots and posts them; at the end of the
    /// output posts FIN. Completes the output reader with the error that stopped it, so the writer's
    /// flushes fail with it.
    /// </summary>
    private async Task PumpSendsAsync()
    {
        Exception? error = null;
        try
        {
            while (true)
            {
                ReadResult result = await _output.Reader.ReadAsync(_sendStop.Token).ConfigureAwait(false);
                ReadOnlySequence<byte> buffer = result.Buffer;
                while (!buffer.IsEmpty)
                {
                    int slot = await AcquireSendSlotAsync().ConfigureAwait(false);
                    int length = (int)Math.Min(buffer.Length, StreamLayout.SlotSize);
                    buffer.Slice(0, length).CopyTo(_pair.SendSlot(slot));
                    PostData(slot, length, fin: false);
                    buffer = buffer.Slice(length);
                }

                _output.Reader.AdvanceTo(result.Buffer.End);
                if (result.IsCompleted || result.IsCanceled)
                {
                    int slot = await AcquireSendSlotAsync().ConfigureAwait(false);
                    PostData(slot, 0, fin: true);
                    break;
                }
            }
        }
        catch (Exception e)
        {
            error = _failure
                ?? (_peerDisconnected ? new TransportException($"The peer {RemoteDescription} closed the connection before this side's stream ended.", e) : null)
                ?? (e is TransportException ? e : new TransportException($"Sending to {RemoteDescription} failed: {e.Message}", e));
            if (e is not OperationCanceledException)
            {
                Fail(error);
            }
        }

        await _output.Reader.CompleteAsync(error).ConfigureAwait(false);
    }

    /// <summary>Waits for a free send slot and a credit, keeping the last credit for credit updates. Send pump.</summary>
    private async ValueTask<int> AcquireSendSlotAsync()
    {
        while (true)
        {
            lock (_sendLock)
            {
                if (_failure is { } failure)
                {
                    throw failure;
                }

                if (_credits >= 2 && _freeSendSlots.Count > 0 && _outstandingSends < StreamLayout.SendQueueDepth - StreamLayout.ReadSlots)
                {
                    _credits--;
                    _outstandingSends++;
                    return _freeSendSlots.Pop();
                }
            }

            await _sendWake.WaitAsync(_sendStop.Token).ConfigureAwait(false);
        }
    }

    /// <summary>Posts a data or FIN message from an acquired slot, returning every owed credit with it. Send pump.</summary>
    private void PostData(int slot, int length, bool fin)
    {
        lock (_sendLock)
        {
            _pair.PostSend(slot, length, StreamLayout.EncodeImmediate(_owed, fin));
            _owed = 0;
        }
    }

    /// <summary>
    /// Sends a credit-only update when enough credits are owed and a credit (even the reserved last one)
    /// is available. Called with <see cref="_sendLock"/> held, by the delivery task after re-posting and by
    /// the completion thread when credits or send-queue room come back.
    /// </summary>
    private void TrySendCreditUpdateLocked()
    {
        if (_owed >= StreamLayout.CreditUpdateThreshold && _credits >= 1 && _failure is null
            && _outstandingSends < StreamLayout.SendQueueDepth - StreamLayout.ReadSlots)
        {
            _pair.PostSend(-1, 0, StreamLayout.EncodeImmediate(_owed, fin: false));
            _credits--;
            _outstandingSends++;
            _owed = 0;
        }
    }

    /// <summary>Completion thread: the peer re-posted <paramref name="credits"/> receives.</summary>
    private void OnCreditsReturned(int credits)
    {
        if (credits == 0)
        {
            return;
        }

        lock (_sendLock)
        {
            _credits += credits;
            TrySendCreditUpdateLocked();
        }

        WakeSendPump();
    }

    /// <summary>Completion thread: a send (data, FIN or update) completed; its slot, if any, is free again.</summary>
    private void OnSendCompleted(int slot)
    {
        lock (_sendLock)
        {
            _outstandingSends--;
            if (slot >= 0)
            {
                _freeSendSlots.Push(slot);
            }

            TrySendCreditUpdateLocked();
        }

        WakeSendPump();
    }

    /// <summary>Wakes the send pump if it waits; one pending wake is enough since it re-checks everything.</summary>
    private void WakeSendPump()
    {
        if (_sendWake.CurrentCount == 0)
        {
            _sendWake.Release();
        }
    }

    /// <summary>Waits until no send is outstanding (every message reached the peer). DisposeAsync.</summary>
    private async Task WaitForSendsToCompleteAsync(CancellationToken cancellationToken)
    {
        while (true)
        {
            lock (_sendLock)
            {
                if (_outstandingSends == 0 || _failure is not null)
                {
                    return;
                }
            }

            await Task.Delay(1, cancellationToken).ConfigureAwait(false);
        }
    }
}
