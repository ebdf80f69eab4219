using System.IO.Pipelines;
using System.Runtime.CompilerServices;
using Modular.Abstractions.Transports;

namespace Modular.Transports.Shared;

/// <summary>
/// Wraps a duplex pipe so that <see cref="Abort"/> makes pending and later reads and flushes fail with
/// a <see cref="TransportException"/> that carries the reason, and so that transport failures surface
/// as <see cref="TransportException"/> naming the connection. Everything else is delegated unchanged.
/// </summary>
internal sealed class AbortablePipe : IDuplexPipe
{
    private readonly IDuplexPipe _inner;
    private readonly string _description;
    private readonly Action _onEnd;
    private readonly Func<Exception?>? _endError;
    private volatile TransportException? _aborted;

    /// <param name="inner">The real pipe.</param>
    /// <param name="description">The connection, e.g. <c>tcp:127.0.0.1:4444</c>.</param>
    /// <param name="onEnd">Called (possibly more than once) when the input ends or fails.</param>
    /// <param name="endError">Asked when the input ends: an error when the end was not a clean close (a reset).</param>
    public AbortablePipe(IDuplexPipe inner, string description, Action onEnd, Func<Exception?>? endError = null)
    {
        _inner = inner;
        _description = description;
        _onEnd = onEnd;
        _endError = endError;
        Input = new AbortableReader(this);
        Output = inner.Output is IGatherWriter gather ? new AbortableGatherWriter(this, gather) : new AbortableWriter(this);
    }

    public PipeReader Input { get; }

    public PipeWriter Output { get; }

    public bool IsAborted => _aborted is not null;

    /// <summary>Fails pending and later reads and flushes with <paramref name="reason"/>. Any thread.</summary>
    public void Abort(Exception? reason)
    {
        _aborted ??= new TransportException(
            $"The migration connection {_description} was aborted{(reason is null ? "" : ": " + reason.Message)}.",
            reason ?? new OperationCanceledException("Aborted."));
        _inner.Input.CancelPendingRead();
        _inner.Output.CancelPendingFlush();
        _onEnd();
    }

    private void ThrowIfAborted()
    {
        if (_aborted is { } ex)
        {
            throw ex;
        }
    }

    private TransportException Wrap(string operation, Exception ex)
    {
        _onEnd();
        return _aborted ?? new TransportException($"{operation} the migration connection {_description} failed: {ex.Message}", ex);
    }

    /// <summary>The error for a write after the transport closed the send side (the peer went away).</summary>
    private TransportException WriterClosed(InvalidOperationException ex)
    {
        _onEnd();
        if (_aborted is { } aborted)
        {
            return aborted;
        }

        string why = _endError?.Invoke()?.Message ?? "the connection was closed; the peer went away";
        return new TransportException($"Writing to the migration connection {_description} failed: {why}", ex);
    }

    private ReadResult Check(ReadResult result)
    {
        if (result.IsCanceled)
        {
            ThrowIfAborted();
        }

        if (result.IsCompleted)
        {
            _onEnd();
            ThrowIfAborted();
            if (_endError?.Invoke() is { } error)
            {
                throw new TransportException($"Reading from the migration connection {_description} failed: {error.Message}", error);
            }
        }

        return result;
    }

    private FlushResult Check(FlushResult result)
    {
        if (result.IsCanceled)
        {
            ThrowIfAborted();
        }

        return result;
    }

    private sealed class AbortableReader(AbortablePipe owner) : PipeReader
    {
        private PipeReader Inner => owner._inner.Input;

        public override ValueTask<ReadResult> ReadAsync(CancellationToken cancellationToken = default)
        {
            owner.ThrowIfAborted();
            ValueTask<ReadResult> pending;
            try
            {
                pending = Inner.ReadAsync(cancellationToken);
                if (pending.IsCompletedSuccessfully)
                {
                    return new(owner.Check(pending.Result));
                }
            }
            catch (Exception ex) when (owner.IsAborted || ex is not (OperationCanceledException or TransportException))
            {
                throw owner.Wrap("Reading from", ex);
            }

            return Slow(pending);

            // Pooled: a read that waits for data is the common case on a busy connection, and each
            // one allocated its state machine (measured: 1.9 MB per GiB received).
            [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
            async ValueTask<ReadResult> Slow(ValueTask<ReadResult> pending)
            {
                try
                {
                    return owner.Check(await pending.ConfigureAwait(false));
                }
                catch (Exception ex) when (owner.IsAborted || ex is not (OperationCanceledException or TransportException))
                {
                    throw owner.Wrap("Reading from", ex);
                }
            }
        }

        public override bool TryRead(out ReadResult result)
        {
            owner.ThrowIfAborted();
            try
            {
                bool got = Inner.TryRead(out result);
                if (got)
                {
                    result = owner.Check(result);
                }

                return got;
            }
            catch (Exception ex) when (owner.IsAborted || ex is not (OperationCanceledException or TransportException))
            {
                throw owner.Wrap("Reading from", ex);
            }
        }

        public override void AdvanceTo(SequencePosition consumed) => Inner.AdvanceTo(consumed);

        public override void AdvanceTo(SequencePosition consumed, SequencePosition examined) => Inner.AdvanceTo(consumed, examined);

        public override void CancelPendingRead() => Inner.CancelPendingRead();

        public override void Complete(Exception? exception = null) => Inner.Complete(exception);
    }

    private sealed class AbortableGatherWriter(AbortablePipe owner, IGatherWriter inner) : AbortableWriter(owner), IGatherWriter
    {
        public void WriteByReference(nint address, int length)
        {
            try
            {
                inner.WriteByReference(address, length);
            }
            catch (InvalidOperationException ex)
            {
                throw Owner.WriterClosed(ex);
            }
        }
    }

    private class AbortableWriter(AbortablePipe owner) : PipeWriter
    {
        protected AbortablePipe Owner => owner;

        private PipeWriter Inner => owner._inner.Output;

        public override bool CanGetUnflushedBytes => Inner.CanGetUnflushedBytes;

        public override long UnflushedBytes => Inner.UnflushedBytes;

        // When the peer goes away (killed, reset), the socket library completes the send pipe's
        // writer itself; the next GetSpan/GetMemory/Advance then throws the bare "Writing is not
        // allowed after writer was completed". Say instead which connection ended and why.
        public override void Advance(int bytes)
        {
            try
            {
                Inner.Advance(bytes);
            }
            catch (InvalidOperationException ex)
            {
                throw owner.WriterClosed(ex);
            }
        }

        public override Memory<byte> GetMemory(int sizeHint = 0)
        {
            try
            {
                return Inner.GetMemory(sizeHint);
            }
            catch (InvalidOperationException ex)
            {
                throw owner.WriterClosed(ex);
            }
        }

        public override Span<byte> GetSpan(int sizeHint = 0)
        {
            try
            {
                return Inner.GetSpan(sizeHint);
            }
            catch (InvalidOperationException ex)
            {
                throw owner.WriterClosed(ex);
            }
        }

        public override void CancelPendingFlush() => Inner.CancelPendingFlush();

        public override void Complete(Exception? exception = null) => Inner.Complete(exception);

        public override ValueTask<FlushResult> FlushAsync(CancellationToken cancellationToken = default)
        {
            owner.ThrowIfAborted();
            ValueTask<FlushResult> pending;
            try
            {
                pending = Inner.FlushAsync(cancellationToken);
                if (pending.IsCompletedSuccessfully)
                {
                    return new(owner.Check(pending.Result));
                }
            }
            catch (Exception ex) when (owner.IsAborted || ex is not (OperationCanceledException or TransportException))
            {
                throw owner.Wrap("Writing to", ex);
            }

            return Slow(pending);

            [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
            async ValueTask<FlushResult> Slow(ValueTask<FlushResult> pending)
            {
                try
                {
                    return owner.Check(await pending.ConfigureAwait(false));
                }
                catch (Exception ex) when (owner.IsAborted || ex is not (OperationCanceledException or TransportException))
                {
                    throw owner.Wrap("Writing to", ex);
                }
            }
        }
    }
}
