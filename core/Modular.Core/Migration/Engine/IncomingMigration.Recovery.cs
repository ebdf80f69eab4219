using Microsoft.Extensions.Logging;
using Modular.Abstractions.Transports;
using Modular.Core.Memory;
using Modular.Core.Migration.State;
using Modular.Core.Migration.Stream;

namespace Modular.Core.Migration.Engine;

/// <summary>
/// Postcopy recovery on the destination (QEMU's postcopy-paused and <c>migrate-recover</c>), with the
/// x-modular-postcopy-recovery capability. Without it a failure after POSTCOPY_RUN loses the guest, as
/// the seed says. With it the listen thread pauses. The guest keeps running with the pages it has; a
/// vCPU that needs a missing page waits for it, and the fault thread's requests wait in the page maps.
/// <c>migrate-recover URI</c> listens for the source's <c>migrate URI resume=true</c>. On the new
/// connection the source asks for each RAM block's received bitmap (RECV_BITMAP). It then sends
/// POSTCOPY_RESUME; this side answers RESUME_ACK, asks again for every page still requested, and goes
/// on reading the stream.
/// </summary>
/// <remarks>
/// Threads: <see cref="RecoverAsync"/> runs on the QMP loop; pausing and the recovery's commands run
/// on the listen thread.
/// </remarks>
public sealed partial class IncomingMigration
{
    private readonly SemaphoreSlim _recoverRequested = new(0, 1);
    private readonly List<IMigrationConnection> _recoveredConnections = [];
    private readonly List<IMigrationListener> _recoveryListeners = [];
    private RecoverTarget? _recoverTarget;
    private volatile bool _recovery;
    private volatile bool _pauseRequested;

    /// <summary>Recoveries that ended in postcopy-active again.</summary>
    public int Recoveries { get; private set; }

    /// <summary>Why the migration paused, while paused or recovering; null otherwise.</summary>
    public string? PauseReason { get; private set; }

    /// <summary>
    /// migrate-recover: listen on <paramref name="endpoint"/> (bound before this returns, so that a bad
    /// URI fails here) for the source's resumed connection. QMP loop.
    /// </summary>
    /// <param name="transport">The transport plugin of the endpoint's scheme.</param>
    /// <param name="endpoint">Where to listen.</param>
    /// <param name="tls">TLS for the new connection, or null.</param>
    /// <returns>False, with nothing done, when a recovery was already asked for.</returns>
    /// <exception cref="TransportException">The endpoint cannot be listened on.</exception>
    public async Task<bool> RecoverAsync(IMigrationTransport transport, TransportEndpoint endpoint, Tls.TlsSession? tls)
    {
        ArgumentNullException.ThrowIfNull(transport);
        ArgumentNullException.ThrowIfNull(endpoint);
        if (Status.Current != MigrationStatus.PostcopyPaused || _recoverTarget is not null)
        {
            return false;
        }

        IMigrationListener listener = await transport.ListenAsync(endpoint, _cancel.Token).ConfigureAwait(false);
        _recoverTarget = new RecoverTarget(listener, tls);
        _recoverRequested.Release();
        _logger.LogInformation("Postcopy recovery: waiting for the source on {Endpoint} (migrate with resume=true there)", listener.Endpoint);
        return true;
    }

    /// <summary>
    /// migrate-pause (QEMU's) on the destination: ends the connection on purpose, so that the
    /// migration pauses as for a failed connection. QMP loop.
    /// </summary>
    /// <returns>False, with nothing done, unless the migration is postcopy-active or postcopy-recover with the recovery capability.</returns>
    public bool PauseOnRequest()
    {
        // Before RUN a failure still fails the migration (the guest has not run here yet).
        if (!_recovery || PostcopyState.Current != State.PostcopyState.Running || Status.Current is not (MigrationStatus.PostcopyActive or MigrationStatus.PostcopyRecover))
        {
            return false;
        }

        _pauseRequested = true;
        _logger.LogInformation("Incoming postcopy migration: migrate-pause, ending the connection");
        _connection?.Abort(new IOException("paused by migrate-pause"));
        return true;
    }

    /// <summary>
    /// The machine is exiting (QMP quit, a signal): stop waiting for the source or a recovery, and
    /// in postcopy disarm guest RAM so that no vCPU stays blocked on a page that will not come (its
    /// thread must end for the process to exit). Idempotent; any thread.
    /// </summary>
    public void AbandonForExit()
    {
        if (Status.IsFinished)
        {
            return;
        }

        _cancel.Cancel();
        AbortPostcopy();
    }

    /// <summary>At LISTEN: with the capability, a failed return-path write pauses instead of failing. Main incoming task.</summary>
    private void PrepareRecovery()
    {
        _recovery = _settings.Snapshot().Has("x-modular-postcopy-recovery");
        if (_recovery)
        {
            _returnPath!.OnFailureWhileRecoverable = ex => _connection?.Abort(new IOException("the return path failed: " + ex.Message, ex));
        }
    }

    /// <summary>True when a failure of the listen thread pauses: the capability is set, the guest runs here (after RUN), and nobody cancelled.</summary>
    private bool CanRecover(Exception ex) =>
        _recovery
        && !_cancel.IsCancellationRequested
        && PostcopyState.Current == State.PostcopyState.Running
        && Volatile.Read(ref _postcopyAborted) == 0
        && ex is not Abstractions.Devices.DeviceStateException;

    /// <summary>
    /// Pauses after <paramref name="cause"/> ended the connection, waits for migrate-recover and the
    /// source's new connection, and returns the reader of its stream. Listen thread.
    /// </summary>
    private async Task<MigrationStreamReader> PauseUntilRecoveredAsync(Exception cause)
    {
        Exception reason = cause;
        while (true)
        {
            PauseReason = _pauseRequested ? "Paused by migrate-pause." : OutgoingMigration.AsSentence(reason);
            _pauseRequested = false;
            _returnPath!.Pause();
            Status.TryMoveTo(MigrationStatus.PostcopyPaused, out _);
            _logger.LogWarning(
                "Incoming postcopy migration paused: {Reason} The guest runs here with the pages it has; a vCPU that needs a missing page waits. Run migrate-recover URI here, then migrate URI with resume=true on the source.",
                PauseReason);
            _ramLoader!.AbandonPartialHostPage();
            _faultThread!.PageChannel = null;
            _faultThread.NameBlockInEveryRequest();
            _preemptStop.Cancel();
            _connection?.Abort(new IOException("postcopy paused"));
            await _preemptTask.ConfigureAwait(false);

            await _recoverRequested.WaitAsync(_cancel.Token).ConfigureAwait(false);
            RecoverTarget target = _recoverTarget!;
            bool accepted = false;
            try
            {
                IMigrationConnection connection = await target.Listener.AcceptAsync(_cancel.Token).ConfigureAwait(false);
                _recoveredConnections.Add(connection);
                if (target.Tls is { } tls)
                {
                    connection = await tls.WrapAsync(connection, _cancel.Token).ConfigureAwait(false);
                    _recoveredConnections.Add(connection);
                }

                _connection = connection;
                Status.MoveTo(MigrationStatus.PostcopyRecover);
                _logger.LogInformation("Postcopy recovery: {Connection} connected", connection.RemoteDescription);
                await _returnPath.ReconnectAsync(connection.Transport.Output).ConfigureAwait(false);
                accepted = true;
                return new MigrationStreamReader(connection.Transport.Input, cancellationToken: _cancel.Token);
            }
            catch (Exception ex) when (!_cancel.IsCancellationRequested)
            {
                reason = ex;
            }
            finally
            {
                _recoverTarget = null;
                if (accepted)
                {
                    // The connection's extra channels (the preempt channel) come in through it: it lives as long as the migration.
                    _recoveryListeners.Add(target.Listener);
                }
                else
                {
                    await TransportCleanup.DisposeAsync(target.Listener, _logger, target.Listener.Endpoint.ToString()).ConfigureAwait(false);
                }
            }
        }
    }

    /// <summary>
    /// RECV_BITMAP (answer with the block's received bitmap) and POSTCOPY_RESUME (RESUME_ACK, then ask
    /// again for every page still requested), only while recovering. Listen thread.
    /// </summary>
    private async ValueTask HandleRecoveryCommandAsync(StreamCommand command, MigrationStreamReader reader, long at)
    {
        if (Status.Current != MigrationStatus.PostcopyRecover)
        {
            throw reader.ErrorAt(at, $"{StreamCommand.RecordName(command.Kind)} in status {Status.Current.ToQmp()}; the source sends it only to recover a paused postcopy migration");
        }

        if (command is RecvBitmapCommand bitmap)
        {
            int index = -1;
            IReadOnlyList<RamBlock> blocks = _machine.Ram.Blocks;
            for (int i = 0; i < blocks.Count; i++)
            {
                if (blocks[i].Name == bitmap.BlockId)
                {
                    index = i;
                }
            }

            if (index < 0)
            {
                throw reader.ErrorAt(at, $"RECV_BITMAP for RAM block '{bitmap.BlockId}', which this machine does not have");
            }

            var received = new ReceivedBitmap(_postcopyRam!.ReceivedBitmap(index));
            await _returnPath!.SendAsync(ReturnPathMessage.RecvBitmap(bitmap.BlockId), received.WriteTo).ConfigureAwait(false);
            return;
        }

        Status.MoveTo(MigrationStatus.PostcopyActive);
        _preemptStop = new CancellationTokenSource();
        _preemptChannel = null;
        _preemptReopenAllowed = true; // the source may open its preempt channel again, right after this
        await _returnPath!.SendAsync(ReturnPathMessage.ResumeAck()).ConfigureAwait(false);
        List<(RamBlock Block, ulong Offset)> pending = _postcopyRam!.PendingRequests();
        foreach ((RamBlock block, ulong offset) in pending)
        {
            await _returnPath.SendAsync(ReturnPathMessage.ReqPagesId(offset, (uint)block.HostPageSize, block.Name)).ConfigureAwait(false);
        }

        Recoveries++;
        PauseReason = null;
        _logger.LogInformation("Incoming postcopy migration resumed; {Pending} requested pages asked for again", pending.Count);
    }

    private sealed record RecoverTarget(IMigrationListener Listener, Tls.TlsSession? Tls);
}
