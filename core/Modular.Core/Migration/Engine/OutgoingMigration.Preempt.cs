using System.IO.Pipelines;
using Microsoft.Extensions.Logging;
using Modular.Abstractions.Devices;
using Modular.Abstractions.Transports;
using Modular.Core.Memory;
using Modular.Core.Migration.Stream;

namespace Modular.Core.Migration.Engine;

/// <summary>
/// Postcopy preempt (QEMU's postcopy-preempt capability): requested pages travel on their own channel,
/// so they never queue behind background pages in the main connection. The return-path reader sends
/// them itself, as soon as a request arrives; the migration task only moves its scan there.
/// </summary>
public sealed partial class OutgoingMigration
{
    private volatile PreemptSender? _preempt;

    // The preempt section's id once postcopy-preempt announced it (a recovery announces it again).
    private uint? _preemptSectionId;

    /// <summary>
    /// With postcopy-preempt: announce channel 1 ("x-modular-postcopy-preempt" section) and open it;
    /// the destination accepts it when it reads the section. A transport without extra channels keeps
    /// requested pages on the main connection (logged). Migration task, right after POSTCOPY_ADVISE.
    /// </summary>
    private async ValueTask OpenPreemptChannelAsync(MigrationStreamWriter writer, PipeWriter output, RamSaver ram, uint sectionId)
    {
        if (_connection is not IExtraChannels channels)
        {
            _logger.LogWarning("postcopy-preempt is set, but {Connection} cannot open extra channels; requested pages share the main connection with background pages.", _connection?.RemoteDescription);
            return;
        }

        _preemptSectionId = sectionId;
        WriteFullSection(writer, sectionId, PreemptChannelSection.Name, 0, PreemptChannelSection.Version, PreemptChannelSection.Encode());
        await FlushAsync(output).ConfigureAwait(false);

        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_cancel.Token);
        timeout.CancelAfter(PreemptChannelSection.OpenTimeout);
        IDuplexPipe channel;
        try
        {
            channel = await channels.OpenChannelAsync(PreemptChannelSection.ChannelIndex, timeout.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!_cancel.IsCancellationRequested)
        {
            throw new TransportException($"the destination did not accept the postcopy preempt channel within {PreemptChannelSection.OpenTimeout.TotalSeconds:F0} s; is it a Modular destination with the same transport plugin?");
        }

        _preempt = new PreemptSender(channel, ram, Stats);

        // An empty batch (EOS alone, which the destination reads as a batch of no pages): the first
        // flush on the channel runs its send path for the first time, 1-4.6 ms measured, and that
        // belongs here in the setup rather than in the first requested page (after it: 0.14 ms).
        await _preempt.SendAsync(0, 0, 0, _cancel.Token).ConfigureAwait(false);
        _logger.LogInformation("Postcopy preempt channel {Index} open to {Connection}", PreemptChannelSection.ChannelIndex, _connection.RemoteDescription);
    }

    /// <summary>
    /// Sends requested pages on the preempt channel. Return-path reader task only (one request at a
    /// time, in arrival order). Pages stay dirty in the migration bitmap, so the main connection sends
    /// every page too and the destination's listen thread sees all RAM before EOF; the copy that
    /// arrives second is dropped by the fault backend (the page is present).
    /// </summary>
    private sealed class PreemptSender(IDuplexPipe channel, RamSaver ram, MigrationStats stats)
    {
        private readonly MigrationStreamWriter _writer = new(channel.Output);

        /// <summary>Writes the pages and EOS and flushes; completes at once when the flush does (no async state machine then).</summary>
        internal ValueTask SendAsync(int block, long page, int count, CancellationToken cancellationToken)
        {
            long before = _writer.Position;
            _writer.ResetRamBlock();
            for (int i = 0; i < count; i++)
            {
                ram.WritePage(_writer, block, page + i);
            }

            _writer.WriteRamEos();
            ValueTask<FlushResult> flush = channel.Output.FlushAsync(cancellationToken);
            if (!flush.IsCompletedSuccessfully)
            {
                return FinishAsync(flush, before, count);
            }

            Account(flush.Result, before, count);
            return ValueTask.CompletedTask;
        }

        private async ValueTask FinishAsync(ValueTask<FlushResult> flush, long before, int count) =>
            Account(await flush.ConfigureAwait(false), before, count);

        private void Account(FlushResult result, long before, int count)
        {
            if (result.IsCanceled || result.IsCompleted)
            {
                throw new IOException("the destination closed the postcopy preempt channel");
            }

            stats.AddTransferred(_writer.Position - before);
            stats.AddPreemptPages(count);
        }
    }
}
