using System.IO.Pipelines;
using Microsoft.Extensions.Logging;
using Modular.Abstractions.Devices;
using Modular.Abstractions.Transports;
using Modular.Core.Migration.Stream;

namespace Modular.Core.Migration.Engine;

/// <summary>
/// The destination's postcopy preempt channel: accepted when the source announces it
/// ("x-modular-postcopy-preempt", right after POSTCOPY_ADVISE); from LISTEN on, the preempt reader
/// places the requested pages that arrive on it, beside the listen thread's background pages.
/// </summary>
public sealed partial class IncomingMigration
{
    private CancellationTokenSource _preemptStop = new();
    private bool _preemptReopenAllowed;
    private IDuplexPipe? _preemptChannel;
    private Task _preemptTask = Task.CompletedTask;

    /// <summary>
    /// The "x-modular-postcopy-preempt" section: accept the channel the source opens next. Main
    /// incoming task, in postcopy's ADVISE state. The source decides (its postcopy-preempt
    /// capability); this side follows, as it must read whatever the source sends there.
    /// </summary>
    private async ValueTask LoadPreemptSectionAsync(SectionHeader header, IMigrationConnection connection, MigrationStreamReader reader, long at)
    {
        byte[] state = await ReadSectionStateAsync(reader, header, PreemptChannelSection.Name, "preempt channel state", 4096).ConfigureAwait(false);
        if (header.InstanceId != 0 || header.VersionId != PreemptChannelSection.Version)
        {
            throw reader.ErrorAt(at, $"section '{PreemptChannelSection.Name}' instance {header.InstanceId} version {header.VersionId} is not what this destination reads (instance 0, version {PreemptChannelSection.Version}); upgrade the destination or clear postcopy-preempt on the source");
        }

        bool reopening = _preemptReopenAllowed;
        _preemptReopenAllowed = false;
        if (_postcopyRam is null || (PostcopyState.Current != State.PostcopyState.Advise && !reopening))
        {
            throw reader.ErrorAt(at, $"section '{PreemptChannelSection.Name}' outside postcopy's ADVISE state (state {State.PostcopyStateMachine.Name(PostcopyState.Current)}); the source sends it right after POSTCOPY_ADVISE");
        }

        int index;
        try
        {
            index = PreemptChannelSection.Decode(state);
        }
        catch (DeviceStateException ex)
        {
            throw reader.ErrorAt(at, ex.Message.TrimEnd('.'));
        }

        if (connection is not IExtraChannels channels)
        {
            throw reader.ErrorAt(at, $"the source opens a postcopy preempt channel, but {connection.RemoteDescription} cannot accept extra channels here; use the same transport plugin on both sides or clear postcopy-preempt on the source");
        }

        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_cancel.Token);
        timeout.CancelAfter(PreemptChannelSection.OpenTimeout);
        try
        {
            _preemptChannel = await channels.OpenChannelAsync(index, timeout.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!_cancel.IsCancellationRequested)
        {
            throw reader.ErrorAt(at, $"the source announced postcopy preempt channel {index} but did not open it within {PreemptChannelSection.OpenTimeout.TotalSeconds:F0} s");
        }

        _logger.LogInformation("Postcopy preempt channel {Index} accepted from {Connection}", index, connection.RemoteDescription);
    }

    /// <summary>Starts the preempt reader, if the source opened a preempt channel. Main incoming task, at LISTEN (RAM armed).</summary>
    private void StartPreemptReader(IMigrationConnection connection)
    {
        if (_preemptChannel is not { } channel)
        {
            return;
        }

        CancellationTokenSource stop = _preemptStop;
        var reader = new MigrationStreamReader(channel.Input, cancellationToken: stop.Token);
        var loader = new RamLoader(_machine.Ram, Stats) { Postcopy = _postcopyRam };
        loader.TrustBlockList();
        // Started here rather than queued to the thread pool: the loop runs on this thread up to
        // its first wait for data, so from then on the channel's receive thread runs it inline when
        // a requested page arrives. Queued, it started only when a pool thread got a core: in a
        // traced run the first requested page waited 2.1 ms for that, placed by a pool thread.
        _preemptTask = RunPreemptReaderAsync(reader, loader, stop, connection);
    }

    /// <summary>The preempt reader's loop: places requested pages until stopped. Started at LISTEN; runs inline on the channel's receive thread.</summary>
    private async Task RunPreemptReaderAsync(MigrationStreamReader reader, RamLoader loader, CancellationTokenSource stop, IMigrationConnection connection)
    {
        try
        {
            while (!await reader.IsAtEndAsync().ConfigureAwait(false))
            {
                await loader.LoadRecordsAsync(reader, isStart: false).ConfigureAwait(false);
            }
        }
        catch (Exception) when (stop.IsCancellationRequested)
        {
            // Stopped: every page has arrived (or postcopy is being given up).
        }
        catch (Exception ex)
        {
            // Requested pages no longer arrive: the guest would wait forever. Fail the migration;
            // aborting the connection ends the listen thread, which reports the error.
            if (_recovery)
            {
                // The listen thread pauses when the connection ends; requested pages then come
                // on the recovered connection.
                _logger.LogWarning("The postcopy preempt channel failed: {Error}", ex.Message);
                connection.Abort(new IOException("the postcopy preempt channel failed: " + ex.Message, ex));
                return;
            }

            _logger.LogError("The postcopy preempt channel failed: {Error}", ex.Message);
            AbortPostcopy();
            connection.Abort(new IOException("the postcopy preempt channel failed: " + ex.Message, ex));
        }
    }

    /// <summary>Stops the preempt reader and waits for it. Listen thread (at the end) or the incoming task (failure).</summary>
    private async ValueTask StopPreemptReaderAsync()
    {
        try
        {
            _preemptStop.Cancel();
        }
        catch (ObjectDisposedException)
        {
            return;
        }

        await _preemptTask.ConfigureAwait(false);
    }
}
