using System.IO.Pipelines;
using Modular.Core.Migration.Stream;

namespace Modular.Core.Migration.Engine;

/// <summary>
/// The destination's return path. The main incoming task and (in postcopy) the fault thread both
/// write here; one lock (the seed's rp_mutex) keeps their messages whole and in order.
/// </summary>
internal sealed class ReturnPathWriter
{
    private readonly PipeWriter _output;
    private readonly SemaphoreSlim _lock = new(1, 1);

    private readonly MigrationStreamWriter _writer;

    internal ReturnPathWriter(PipeWriter output)
    {
        _output = output;
        _writer = new MigrationStreamWriter(output);
    }

    /// <summary>Writes and flushes one message. Any thread; serialised by the return-path lock.</summary>
    internal async ValueTask SendAsync(ReturnPathMessage message, CancellationToken cancellationToken = default)
    {
        await _lock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
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
            message.WriteTo(_writer);
            ValueTask<FlushResult> flush = _output.FlushAsync();
            FlushResult result = flush.IsCompletedSuccessfully ? flush.Result : flush.AsTask().GetAwaiter().GetResult();
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
