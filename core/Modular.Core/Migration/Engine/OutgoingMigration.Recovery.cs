using System.Collections.Concurrent;
using System.IO.Pipelines;
using Microsoft.Extensions.Logging;
using Modular.Abstractions.Transports;
using Modular.Core.Memory;
using Modular.Core.Migration.State;
using Modular.Core.Migration.Stream;

namespace Modular.Core.Migration.Engine;

/// <summary>
/// Postcopy recovery on the source (QEMU's postcopy-paused, <c>migrate</c> with <c>resume</c>), with
/// the x-modular-postcopy-recovery capability. Without it a failed connection during postcopy fails
/// the migration and loses the guest, as the seed says. With it the source pauses: it keeps the
/// stopped guest's RAM and waits. <c>migrate URI resume=true</c> then connects again. The source asks
/// for each RAM block's received bitmap (RECV_BITMAP) and marks every page the destination lacks for
/// sending. It sends POSTCOPY_RESUME and, at RESUME_ACK, goes on with postcopy.
/// </summary>
/// <remarks>
/// With postcopy-preempt the preempt channel is opened again after RESUME_ACK, as QEMU does, so
/// requested pages travel on their own channel after a recovery too. Threads: <see cref="Resume"/> runs on the QMP loop; the received bitmaps and
/// RESUME_ACK arrive on the return-path reader; everything else runs on the migration task.
/// </remarks>
public sealed partial class OutgoingMigration
{
    /// <summary>How long a recovery's handshake (bitmaps, RESUME_ACK) may take before the source pauses again.</summary>
    internal static readonly TimeSpan RecoveryTimeout = TimeSpan.FromSeconds(30);

    private readonly SemaphoreSlim _resumeRequested = new(0, 1);
    private ResumeTarget? _resumeTarget;
    private ConcurrentDictionary<string, TaskCompletionSource<ReceivedBitmap>> _receivedBitmaps = new(StringComparer.Ordinal);
    private TaskCompletionSource _resumeAcked = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private volatile bool _pauseRequested;

    /// <summary>Recoveries that ended in postcopy-active again.</summary>
    public int Recoveries { get; private set; }

    /// <summary>Why the last pause happened, while paused or recovering; null otherwise.</summary>
    public string? PauseReason { get; private set; }

    private bool RecoveryEnabled => Settings.Has("x-modular-postcopy-recovery");

    /// <summary>
    /// migrate with resume=true: connect to <paramref name="endpoint"/> and recover the paused postcopy
    /// migration. QMP loop.
    /// </summary>
    /// <param name="transport">The transport plugin of the endpoint's scheme.</param>
    /// <param name="endpoint">Where the destination listens after migrate-recover.</param>
    /// <param name="tls">TLS for the new connection, or null.</param>
    /// <returns>False, with nothing done, when the migration is not paused.</returns>
    public bool Resume(IMigrationTransport transport, TransportEndpoint endpoint, Tls.TlsSession? tls)
    {
        ArgumentNullException.ThrowIfNull(transport);
        ArgumentNullException.ThrowIfNull(endpoint);
        if (Status.Current != MigrationStatus.PostcopyPaused || _resumeRequested.CurrentCount > 0)
        {
            return false;
        }

        _resumeTarget = new ResumeTarget(transport, endpoint, tls);
        _resumeRequested.Release();
        return true;
    }

    /// <summary>
    /// migrate-pause (QEMU's) on the source: ends the connection on purpose, so that the migration
    /// pauses as for a failed connection (operators use it to move a migration to another network).
    /// QMP loop.
    /// </summary>
    /// <returns>False, with nothing done, unless the migration is postcopy-active or postcopy-recover with the recovery capability.</returns>
    public bool PauseOnRequest()
    {
        if (!RecoveryEnabled || Status.Current is not (MigrationStatus.PostcopyActive or MigrationStatus.PostcopyRecover))
        {
            return false;
        }

        _pauseRequested = true;
        _logger.LogInformation("Postcopy migration to {Endpoint}: migrate-pause, ending the connection", _endpoint);
        _connection?.Abort(new IOException("paused by migrate-pause"));
        return true;
    }

    /// <summary>True when a failure of the postcopy phase pauses instead of failing: the capability is set and nobody cancelled.</summary>
    /// <remarks>A destination that said SHUT with the error flag (it failed, for example inside the package's device loads) has nothing to recover.</remarks>
    private bool CanRecover(Exception ex) =>
        RecoveryEnabled && _inPostcopy && !_cancel.IsCancellationRequested && ex is not DestinationFailedException
        && !(_shutReceived.Task.IsCompletedSuccessfully && _shutReceived.Task.Result != 0);

    /// <summary>
    /// Pauses after <paramref name="cause"/> ended the connection, waits for <see cref="Resume"/>,
    /// and recovers on the new connection; a recovery that fails pauses again. Returns the channel
    /// postcopy goes on with. Migration task.
    /// </summary>
    private async Task<PostcopyChannel> PauseUntilResumedAsync(Exception cause, PostcopyChannel failed, RamSaver ram)
    {
        Exception reason = cause;
        Task returnPathReader = failed.ReturnPathReader;
        while (true)
        {
            PauseReason = _pauseRequested ? "Paused by migrate-pause." : AsSentence(reason);
            _pauseRequested = false;
            Status.TryMoveTo(MigrationStatus.PostcopyPaused, out _);
            _logger.LogWarning(
                "Postcopy migration to {Endpoint} paused: {Reason} The guest waits on the destination with the pages it has; run migrate-recover there and migrate with resume=true here to go on.",
                _endpoint,
                PauseReason);
            await CloseForPauseAsync(returnPathReader).ConfigureAwait(false);
            await _resumeRequested.WaitAsync(_cancel.Token).ConfigureAwait(false);
            ResumeTarget target = _resumeTarget!;
            Status.MoveTo(MigrationStatus.PostcopyRecover);
            _logger.LogInformation("Postcopy migration: recovering over {Endpoint}", target.Endpoint);
            Task? reader = null;
            try
            {
                (PostcopyChannel channel, reader) = await ReconnectAsync(target, ram).ConfigureAwait(false);
                Recoveries++;
                PauseReason = null;
                Status.MoveTo(MigrationStatus.PostcopyActive);
                _logger.LogInformation("Postcopy migration resumed over {Endpoint}; {Pages} pages still to send", target.Endpoint, ram.DirtyPages);
                return channel;
            }
            catch (Exception ex) when (!_cancel.IsCancellationRequested && ex is not DestinationFailedException)
            {
                reason = ex;
                returnPathReader = reader ?? Task.CompletedTask;
            }
        }
    }

    /// <summary>Drops the failed connection (and its preempt channel) and waits for its return-path reader to end. Migration task.</summary>
    private async Task CloseForPauseAsync(Task returnPathReader)
    {
        IMigrationConnection? connection = _connection;
        _connection = null;
        if (connection is not null)
        {
            connection.Abort(new IOException("postcopy paused"));
            await TransportCleanup.DisposeAsync(connection, _logger, connection.RemoteDescription).ConfigureAwait(false);
        }

        await Task.WhenAny(returnPathReader, Task.Delay(TimeSpan.FromSeconds(5))).ConfigureAwait(false);
        _preempt = null;
        while (_requests.TryDequeue(out _))
        {
            // The destination asks again for what it still waits for once resumed.
        }
    }

    /// <summary>
    /// Connects to the resume target, opens the return path, takes each RAM block's received bitmap
    /// and marks what the destination lacks for sending, then POSTCOPY_RESUME and RESUME_ACK.
    /// Migration task.
    /// </summary>
    private async Task<(PostcopyChannel Channel, Task ReturnPathReader)> ReconnectAsync(ResumeTarget target, RamSaver ram)
    {
        IMigrationConnection connected = await target.Transport.ConnectAsync(target.Endpoint, _cancel.Token).ConfigureAwait(false);
        _connection = connected;
        if (target.Tls is { } tls)
        {
            _connection = await tls.WrapAsync(connected, _cancel.Token).ConfigureAwait(false);
        }

        IMigrationConnection connection = _connection;
        _shutReceived = new TaskCompletionSource<uint>(TaskCreationOptions.RunContinuationsAsynchronously);
        _resumeAcked = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        IReadOnlyList<RamBlock> blocks = _machine.Ram.Blocks;
        _receivedBitmaps = new ConcurrentDictionary<string, TaskCompletionSource<ReceivedBitmap>>(
            blocks.Select(b => KeyValuePair.Create(b.Name, new TaskCompletionSource<ReceivedBitmap>(TaskCreationOptions.RunContinuationsAsynchronously))),
            StringComparer.Ordinal);
        Task reader = ReadReturnPathAsync(connection);
        PipeWriter output = connection.Transport.Output;
        var writer = new MigrationStreamWriter(output);
        foreach (RamBlock block in blocks)
        {
            new RecvBitmapCommand(block.Name).WriteTo(writer);
        }

        await FlushAsync(output).ConfigureAwait(false);
        long lacking = 0;
        for (int i = 0; i < blocks.Count; i++)
        {
            ReceivedBitmap bitmap = await AwaitRecoveryStepAsync(_receivedBitmaps[blocks[i].Name].Task, reader, $"the received bitmap of RAM block '{blocks[i].Name}'").ConfigureAwait(false);
            lacking += ram.ResendNotReceived(i, bitmap.Bitmap);
        }

        _logger.LogInformation("Postcopy recovery: the destination lacks {Pages} pages", lacking);
        new PostcopyResumeCommand().WriteTo(writer);
        await FlushAsync(output).ConfigureAwait(false);
        await AwaitRecoveryStepAsync(_resumeAcked.Task, reader, "RESUME_ACK").ConfigureAwait(false);
        if (_preemptSectionId is uint sectionId)
        {
            // As QEMU re-establishes its preempt channel: requested pages go on their own channel again.
            await OpenPreemptChannelAsync(writer, output, ram, sectionId).ConfigureAwait(false);
        }

        SetRateLimit(Settings.MaxPostcopyBandwidth, writer.Position);
        long accounted = writer.Position;
        async ValueTask AfterFlush(long _)
        {
            long position = writer.Position;
            Stats.AddTransferred(position - accounted);
            accounted = position;
            await ThrottleAsync(position).ConfigureAwait(false);
        }

        return (new PostcopyChannel(writer, output, AfterFlush, reader), reader);
    }

    /// <summary>Waits for one answer of the recovery handshake, failing when the return path ends first or it takes too long.</summary>
    private async Task<T> AwaitRecoveryStepAsync<T>(Task<T> step, Task returnPathReader, string what)
    {
        await AwaitRecoveryStepAsync((Task)step, returnPathReader, what).ConfigureAwait(false);
        return await step.ConfigureAwait(false);
    }

    private async Task AwaitRecoveryStepAsync(Task step, Task returnPathReader, string what)
    {
        Task first = await Task.WhenAny(step, returnPathReader, Task.Delay(RecoveryTimeout, _cancel.Token)).ConfigureAwait(false);
        if (first == step)
        {
            await step.ConfigureAwait(false);
            return;
        }

        if (first == returnPathReader)
        {
            string why = _shutReceived.Task.IsFaulted ? _shutReceived.Task.Exception!.InnerException!.Message : "the destination closed it";
            throw new IOException($"the return path ended before {what} arrived ({why}); is the destination in postcopy-paused, with migrate-recover on that URI?");
        }

        _cancel.Token.ThrowIfCancellationRequested();
        throw new TimeoutException($"{what} did not arrive within {RecoveryTimeout.TotalSeconds:F0} s of the recovery's start");
    }

    /// <summary>RECV_BITMAP and its bitmap, from the return path. Return-path reader.</summary>
    private void OnReceivedBitmap(string blockId, ReceivedBitmap bitmap)
    {
        if (Status.Current != MigrationStatus.PostcopyRecover || !_receivedBitmaps.TryGetValue(blockId, out TaskCompletionSource<ReceivedBitmap>? waiting))
        {
            throw new InvalidOperationException($"the destination sent the received bitmap of RAM block '{blockId}', which this source did not ask for");
        }

        waiting.TrySetResult(bitmap);
    }

    /// <summary>RESUME_ACK, from the return path. Return-path reader.</summary>
    private void OnResumeAck()
    {
        if (Status.Current != MigrationStatus.PostcopyRecover)
        {
            throw new InvalidOperationException($"the destination sent RESUME_ACK in status {Status.Current.ToQmp()}; it only answers POSTCOPY_RESUME");
        }

        _resumeAcked.TrySetResult();
    }

    /// <summary>An exception's message (TLS wrappers unwrapped) as one sentence: a full stop added unless it ends in one, or in a question or exclamation mark.</summary>
    internal static string AsSentence(Exception ex)
    {
        string message = Migration.Tls.TlsSession.Unwrap(ex).Message.TrimEnd();
        return message.EndsWith('.') || message.EndsWith('?') || message.EndsWith('!') ? message : message + ".";
    }

    private sealed record ResumeTarget(IMigrationTransport Transport, TransportEndpoint Endpoint, Tls.TlsSession? Tls);

    /// <summary>The forward path postcopy writes to, its accounting after each flush, and the return path's reader.</summary>
    private sealed record PostcopyChannel(MigrationStreamWriter Writer, PipeWriter Output, Func<long, ValueTask> AfterFlush, Task ReturnPathReader);

    /// <summary>The destination said (SHUT with the error flag) that it could not load the guest: nothing to recover.</summary>
    private sealed class DestinationFailedException(string message) : IOException(message);
}
