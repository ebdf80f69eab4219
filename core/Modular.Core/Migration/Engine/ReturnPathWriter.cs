using System.IO.Pipelines;
using Modular.Core.Migration.Stream;

namespace Modular.Core.Migration.Engine;

/// <summary>
/// The destination's return path. The main incoming task and (in postcopy) the fault thread both
/// write here; one lock (the seed's rp_mutex) keeps their messages whole and in order.
/// </summary>
/// <remarks>
/// Postcopy recovery: <see cref="Pause"/> makes every message a no-op (requests wait in the page
/// maps as requested pages; they are asked for again after the recovery) until
/// <see cref="ReconnectAsync"/> gives the writer the new connection's return path.
/// </remarks>
internal sealed class ReturnPathWriter
{
    private readonly SemaphoreSlim _lock = new(1, 1);
    private PipeWriter _output;
    private MigrationStreamWriter _writer;
    private volatile bool _paused;

    internal ReturnPathWriter(PipeWriter output)
    {
        _output = output;
        _writer = new MigrationStreamWriter(output);
    }

    /// <summary>
    /// Postcopy recovery: when set, a failed write pauses this writer (later messages are dropped)
    /// and reports the failure here instead of throwing, so the fault thread goes on; the caller
    /// ends the connection, and the listen thread pauses the migration.
    /// </summary>
    internal Action<Exception>? OnFailureWhileRecoverable { get; set; }

    /// <summary>True while messages are dropped (postcopy paused).</summary>
    internal bool IsPaused => _paused;

    /// <summary>Drops every message from now on, until <see cref="ReconnectAsync"/>. Any thread.</summary>
    internal void Pause() => _paused = true;

    /// <summary>Writes from now on to <paramref name="output"/>, a recovered connection's return path. Listen thread.</summary>
    internal async ValueTask ReconnectAsync(PipeWriter output)
    {
        await _lock.WaitAsync().ConfigureAwait(false);
        try
        {
            _output = output;
            _writer = new MigrationStreamWriter(output);
            _paused = false;
        }
        finally
        {
            _lock.Release();
        }
    }

    /// <summary>
    /// Writes one message and what must follow it at once (a received bitmap), then flushes, so
    /// that no other message comes between them. Any thread; serialised by the lock.
    /// </summary>
    internal async ValueTask SendAsync(ReturnPathMessage message, Action<MigrationStreamWriter> trailer)
    {
        await _lock.WaitAsync().ConfigureAwait(false);
        try
        {
            message.WriteTo(_writer);
            trailer(_writer);
            FlushResult result = await _output.FlushAsync().ConfigureAwait(false);
            if (result.IsCompleted || result.IsCanceled)
            {
                throw new IOException("the source closed the return path");
            }
        }
        finally
        {
            _lock.Release();
        }
    }

    /// <summary>Writes and flushes one message. Any thread; serialised by the return-path lock.</summary>
    internal async ValueTask SendAsync(ReturnPathMessage message, CancellationToken cancellationToken = default)
    {
        await _lock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (_paused)
            {
                return;
            }

            message.WriteTo(_writer);
            FlushResult result = await _output.FlushAsync(cancellationToken).ConfigureAwait(false);
            if (result.IsCompleted || result.IsCanceled)
            {
                throw new IOException("the source closed the return path");
            }
        }
        finally
        {
            _lock.Release();
        }
    }

    /// <summary>
    /// Writes and flushes one message, blocking: for the postcopy fault thread (a dedicated thread,
    /// so blocking is fine; allocates nothing unless the flush has to wait). Serialised by the lock.
    /// </summary>
    internal void Send(ReturnPathMessage message)
    {
        _lock.Wait();
        try
        {
            if (_paused)
            {
                return;
            }

            message.WriteTo(_writer);
            ValueTask<FlushResult> flush = _output.FlushAsync();
            FlushResult result = flush.IsCompletedSuccessfully ? flush.Result : flush.AsTask().GetAwaiter().GetResult();
            if (result.IsCompleted || result.IsCanceled)
            {
                throw new IOException("the source closed the return path");
            }
        }
        catch (Exception ex) when (OnFailureWhileRecoverable is { } onFailure && ex is IOException or InvalidOperationException or ObjectDisposedException or OperationCanceledException or Abstractions.Transports.TransportException)
        {
            _paused = true;
            onFailure(ex);
        }
        finally
        {
            _lock.Release();
        }
    }

    /// <summary>Like <see cref="SendAsync"/>, but swallows failures (used while failing already).</summary>
    internal async ValueTask TrySendAsync(ReturnPathMessage message)
    {
        try
        {
            await SendAsync(message).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is IOException or InvalidOperationException or ObjectDisposedException or OperationCanceledException or Abstractions.Transports.TransportException)
        {
            // Already failing: the source will see the connection drop instead.
        }
    }
}
