using System.Buffers;
using System.IO.Pipelines;
using System.Net.Security;
using Modular.Abstractions.Transports;

namespace Modular.Core.Migration.Tls;

/// <summary>
/// A migration connection with every channel in TLS: the main connection (forward and return path),
/// and each extra channel (postcopy preempt) and raw channel (multifd), each with its own handshake
/// when it opens. Raw channels are made from the transport's extra channels, since TLS needs a byte
/// stream under it. The transport's faster paths (sends by reference, receives straight into guest
/// RAM) do not apply: every byte is encrypted and decrypted in a buffer. Over a transport without
/// extra channels it offers none either (<see cref="Create"/>), so the engine falls back as it does
/// for that transport in the clear.
/// </summary>
internal class TlsMigrationConnection : IMigrationConnection
{
    private const int WriterBufferSize = 64 * 1024;
    private readonly TlsSession _session;
    private readonly IMigrationConnection _inner;
    private readonly List<IAsyncDisposable> _owned = [];
    private readonly TlsPipe _pipe;

    /// <summary>The connection in TLS, with extra and raw channels when <paramref name="inner"/> has extra channels.</summary>
    internal static TlsMigrationConnection Create(TlsSession session, IMigrationConnection inner, SslStream ssl) =>
        inner is IExtraChannels ? new WithChannels(session, inner, ssl) : new TlsMigrationConnection(session, inner, ssl);

    private TlsMigrationConnection(TlsSession session, IMigrationConnection inner, SslStream ssl)
    {
        _session = session;
        _inner = inner;
        _pipe = new TlsPipe(ssl, inner.Transport);
        _owned.Add(ssl);
        RemoteDescription = inner.RemoteDescription + " (TLS)";
    }

    public IDuplexPipe Transport => _pipe;

    public CancellationToken Closed => _inner.Closed;

    public string RemoteDescription { get; }

    public void Abort(Exception? reason = null) => _inner.Abort(reason);

    private async ValueTask<(SslStream Ssl, IDuplexPipe Inner)> OpenAsync(int index, CancellationToken cancellationToken)
    {
        var extra = (IExtraChannels)_inner;
        IDuplexPipe pipe = await extra.OpenChannelAsync(index, cancellationToken).ConfigureAwait(false);
        SslStream ssl = await _session.HandshakeAsync(pipe, $"{_inner.RemoteDescription} (channel {index})", cancellationToken).ConfigureAwait(false);
        lock (_owned)
        {
            _owned.Add(ssl);
        }

        return (ssl, pipe);
    }

    /// <summary>Over a transport with extra channels: postcopy preempt's and multifd's channels, each with its own handshake.</summary>
    private sealed class WithChannels(TlsSession session, IMigrationConnection inner, SslStream ssl) : TlsMigrationConnection(session, inner, ssl), IExtraChannels, IRawChannels
    {
        public async ValueTask<IDuplexPipe> OpenChannelAsync(int index, CancellationToken cancellationToken = default)
        {
            (SslStream channel, IDuplexPipe pipe) = await OpenAsync(index, cancellationToken).ConfigureAwait(false);
            return new TlsPipe(channel, pipe);
        }

        public async ValueTask<IRawChannel> OpenRawChannelAsync(int index, CancellationToken cancellationToken = default)
        {
            (SslStream channel, IDuplexPipe pipe) = await OpenAsync(index, cancellationToken).ConfigureAwait(false);
            return new TlsRawChannel(channel, pipe, $"{RemoteDescription} (channel {index})");
        }
    }

    public async ValueTask DisposeAsync()
    {
        IAsyncDisposable[] owned;
        lock (_owned)
        {
            owned = [.. _owned];
            _owned.Clear();
        }

        try
        {
            await _inner.DisposeAsync().ConfigureAwait(false);
        }
        finally
        {
            foreach (IAsyncDisposable ssl in owned)
            {
                try
                {
                    await ssl.DisposeAsync().ConfigureAwait(false);
                }
                catch (Exception ex) when (ex is IOException or ObjectDisposedException or InvalidOperationException)
                {
                    // The channel under it has gone already.
                }
            }
        }
    }

    /// <summary>A pipe over an SslStream; completing its output ends the channel's sending side after the bytes written.</summary>
    internal sealed class TlsPipe : IDuplexPipe
    {
        internal TlsPipe(SslStream ssl, IDuplexPipe inner)
        {
            Input = new UnwrappingReader(PipeReader.Create(ssl, new StreamPipeReaderOptions(bufferSize: WriterBufferSize, minimumReadSize: 4096, leaveOpen: true)));
            Output = new CompletingWriter(PipeWriter.Create(ssl, new StreamPipeWriterOptions(minimumBufferSize: WriterBufferSize, leaveOpen: true)), inner.Output);
        }

        public PipeReader Input { get; }

        public PipeWriter Output { get; }
    }

    /// <summary>Writes through the TLS writer; its completion also completes the transport's output (the peer reads the end).</summary>
    private sealed class CompletingWriter(PipeWriter tls, PipeWriter transport) : PipeWriter
    {
        // Made once: a method group passed per call would allocate a delegate for every flush.
        private readonly Func<CancellationToken, ValueTask<FlushResult>> _flush = tls.FlushAsync;

        public override bool CanGetUnflushedBytes => tls.CanGetUnflushedBytes;

        public override long UnflushedBytes => tls.UnflushedBytes;

        public override void Advance(int bytes) => tls.Advance(bytes);

        public override void CancelPendingFlush() => tls.CancelPendingFlush();

        public override ValueTask<FlushResult> FlushAsync(CancellationToken cancellationToken = default) =>
            Unwrapped(_flush, cancellationToken);

        public override Memory<byte> GetMemory(int sizeHint = 0) => tls.GetMemory(sizeHint);

        public override Span<byte> GetSpan(int sizeHint = 0) => tls.GetSpan(sizeHint);

        public override void Complete(Exception? exception = null)
        {
            try
            {
                tls.Complete(exception);
            }
            finally
            {
                transport.Complete(exception);
            }
        }

        public override async ValueTask CompleteAsync(Exception? exception = null)
        {
            try
            {
                await tls.CompleteAsync(exception).ConfigureAwait(false);
            }
            finally
            {
                await transport.CompleteAsync(exception).ConfigureAwait(false);
            }
        }
    }

    /// <summary>
    /// The transport's own error instead of SslStream's "see inner exception" wrapper (see
    /// <see cref="TlsSession.Unwrap"/>), so that the migration's error names the connection.
    /// </summary>
    private static Exception Rethrow(IOException error)
    {
        Exception cause = TlsSession.Unwrap(error);
        if (!ReferenceEquals(cause, error))
        {
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(cause);
        }

        return error;
    }

    /// <summary>Runs a pipe operation over SslStream with the transport's errors unwrapped (<see cref="Rethrow"/>); no allocation when it completes at once.</summary>
    private static ValueTask<T> Unwrapped<T>(Func<CancellationToken, ValueTask<T>> operation, CancellationToken cancellationToken)
    {
        ValueTask<T> pending;
        try
        {
            pending = operation(cancellationToken);
        }
        catch (IOException ex)
        {
            throw Rethrow(ex);
        }

        return pending.IsCompletedSuccessfully ? pending : Awaited(pending);

        static async ValueTask<T> Awaited(ValueTask<T> pending)
        {
            try
            {
                return await pending.ConfigureAwait(false);
            }
            catch (IOException ex)
            {
                throw Rethrow(ex);
            }
        }
    }

    /// <summary>Reads through SslStream's reader, with the transport's errors unwrapped (<see cref="Rethrow"/>).</summary>
    private sealed class UnwrappingReader(PipeReader tls) : PipeReader
    {
        // Made once: a method group passed per call would allocate a delegate for every read.
        private readonly Func<CancellationToken, ValueTask<ReadResult>> _read = tls.ReadAsync;

        public override ValueTask<ReadResult> ReadAsync(CancellationToken cancellationToken = default) =>
            Unwrapped(_read, cancellationToken);

        public override bool TryRead(out ReadResult result) => tls.TryRead(out result);

        public override void AdvanceTo(SequencePosition consumed) => tls.AdvanceTo(consumed);

        public override void AdvanceTo(SequencePosition consumed, SequencePosition examined) => tls.AdvanceTo(consumed, examined);

        public override void CancelPendingRead() => tls.CancelPendingRead();

        public override void Complete(Exception? exception = null) => tls.Complete(exception);

        public override ValueTask CompleteAsync(Exception? exception = null) => tls.CompleteAsync(exception);
    }

    /// <summary>
    /// A multifd channel in TLS: sends gather their segments into one buffer before encrypting (one
    /// TLS write per <see cref="SendBufferSize"/>, not one per page); receives decrypt straight into
    /// the segments. <see cref="Abort"/> fails this side's blocked calls; the peer sees the
    /// connection's own abort, which the migration does on any channel error.
    /// </summary>
    private sealed unsafe class TlsRawChannel(SslStream ssl, IDuplexPipe inner, string description) : IRawChannel
    {
        private const int SendBufferSize = 256 * 1024;
        private byte[]? _sendBuffer;
        private volatile bool _aborted;

        public string Description { get; } = description;

        public void Send(ReadOnlySpan<RawSegment> segments)
        {
            byte[] buffer = _sendBuffer ??= ArrayPool<byte>.Shared.Rent(SendBufferSize);
            int used = 0;
            try
            {
                foreach (RawSegment segment in segments)
                {
                    var source = new ReadOnlySpan<byte>((void*)segment.Address, segment.Length);
                    while (!source.IsEmpty)
                    {
                        int n = Math.Min(source.Length, buffer.Length - used);
                        source[..n].CopyTo(buffer.AsSpan(used));
                        used += n;
                        source = source[n..];
                        if (used == buffer.Length)
                        {
                            ssl.Write(buffer, 0, used);
                            used = 0;
                        }
                    }
                }

                if (used > 0)
                {
                    ssl.Write(buffer, 0, used);
                }

                ssl.Flush();
            }
            catch (Exception ex) when (ex is not IOException)
            {
                throw Failed("sending", ex);
            }
            catch (IOException ex) when (_aborted)
            {
                throw Failed("sending", ex);
            }
        }

        public bool Receive(ReadOnlySpan<RawSegment> segments)
        {
            try
            {
                bool first = true;
                foreach (RawSegment segment in segments)
                {
                    var target = new Span<byte>((void*)segment.Address, segment.Length);
                    if (first)
                    {
                        first = false;
                        int got = ssl.ReadAtLeast(target, target.Length, throwOnEndOfStream: false);
                        if (got == 0)
                        {
                            return false;
                        }

                        if (got < target.Length)
                        {
                            throw new EndOfStreamException($"{Description} ended part-way through a packet ({got} of {target.Length} bytes).");
                        }

                        continue;
                    }

                    ssl.ReadExactly(target);
                }

                return true;
            }
            catch (EndOfStreamException)
            {
                throw;
            }
            catch (Exception ex) when (ex is not IOException || _aborted)
            {
                throw Failed("receiving", ex);
            }
        }

        public void CompleteSend() => inner.Output.Complete();

        public void Abort()
        {
            _aborted = true;
            inner.Input.CancelPendingRead();
            inner.Output.CancelPendingFlush();
        }

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _sendBuffer, null) is { } buffer)
            {
                ArrayPool<byte>.Shared.Return(buffer);
            }
        }

        private IOException Failed(string what, Exception ex) =>
            new($"{what} on {Description} failed: {(_aborted ? "the channel was aborted" : TlsSession.Unwrap(ex).Message)}", ex);
    }
}
