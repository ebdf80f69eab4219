using System.Buffers;
using System.IO.Pipelines;
using System.Net.Sockets;
using Modular.Abstractions.Transports;

namespace Example.Tcpz;

/// <summary>
/// One tcpz connection. The engine writes to <see cref="Transport"/>.Output; a send pump compresses
/// what was written into frames and sends them. A receive pump reads frames and decodes them into
/// <see cref="Transport"/>.Input. Both pipes are bounded, so a slow peer slows the writer down
/// (backpressure) instead of letting memory grow: the receive pump stops reading the socket while the
/// input pipe is full, TCP's window closes, the send pump blocks, and the output pipe fills up.
/// </summary>
internal sealed class TcpzConnection : IMigrationConnection, IDuplexPipe
{
    private static readonly PipeOptions Bounded = new(pauseWriterThreshold: 1 << 20, resumeWriterThreshold: 512 << 10, useSynchronizationContext: false);
    private readonly Socket _socket;
    private readonly Pipe _outgoing = new(Bounded);
    private readonly Pipe _incoming = new(Bounded);
    private readonly CancellationTokenSource _closed = new();
    private readonly Task _sending;
    private readonly Task _receiving;
    private volatile TransportException? _aborted;
    private long _rawSent;
    private long _wireSent;

    public TcpzConnection(Socket socket, string remoteDescription)
    {
        _socket = socket;
        RemoteDescription = remoteDescription;
        Input = new AbortAwareReader(this);
        Output = new AbortAwareWriter(this);
        _sending = Task.Run(SendPumpAsync);
        _receiving = Task.Run(ReceivePumpAsync);
    }

    public IDuplexPipe Transport => this;

    public PipeReader Input { get; }

    public PipeWriter Output { get; }

    public CancellationToken Closed => _closed.Token;

    public string RemoteDescription { get; }

    /// <summary>Stream bytes sent so far, before compression.</summary>
    internal long RawBytesSent => Interlocked.Read(ref _rawSent);

    /// <summary>Bytes put on the wire so far (frames with headers).</summary>
    internal long WireBytesSent => Interlocked.Read(ref _wireSent);

    /// <summary>Fails local reads and writes with <paramref name="reason"/>, and resets the socket so the peer's reads fail at once.</summary>
    public void Abort(Exception? reason = null)
    {
        _aborted ??= new TransportException(
            $"The migration connection {RemoteDescription} was aborted{(reason is null ? "" : ": " + reason.Message)}.",
            reason ?? new OperationCanceledException("Aborted."));
        _incoming.Reader.CancelPendingRead();
        _outgoing.Writer.CancelPendingFlush();
        try
        {
            // Linger 0 makes close send a reset rather than a FIN, which the peer could not tell from a finished stream.
            _socket.LingerState = new LingerOption(true, 0);
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
            // Already closed.
        }

        _socket.Dispose();
        SignalClosed();
    }

    /// <summary>Sends what was written (waiting up to 10 s for a slow peer), then closes the socket and waits for both pumps.</summary>
    public async ValueTask DisposeAsync()
    {
        await _outgoing.Writer.CompleteAsync().ConfigureAwait(false);
        await Task.WhenAny(_sending, Task.Delay(TimeSpan.FromSeconds(10))).ConfigureAwait(false);
        _socket.Dispose();
        await Task.WhenAll(_sending, _receiving).ConfigureAwait(false);
        await _incoming.Reader.CompleteAsync().ConfigureAwait(false);
        SignalClosed();
        _closed.Dispose();
    }

    private async Task SendPumpAsync()
    {
        byte[] raw = ArrayPool<byte>.Shared.Rent(FrameFormat.MaxRaw);
        byte[] frame = ArrayPool<byte>.Shared.Rent(FrameFormat.HeaderSize + FrameFormat.MaxPayload);
        PipeReader reader = _outgoing.Reader;
        try
        {
            while (true)
            {
                ReadResult result = await reader.ReadAsync().ConfigureAwait(false);
                ReadOnlySequence<byte> buffer = result.Buffer;
                while (buffer.Length > 0)
                {
                    int n = (int)Math.Min(buffer.Length, FrameFormat.MaxRaw);
                    buffer.Slice(0, n).CopyTo(raw);
                    int length = FrameFormat.Encode(raw.AsSpan(0, n), frame);
                    await SendAllAsync(frame.AsMemory(0, length)).ConfigureAwait(false);
                    Interlocked.Add(ref _rawSent, n);
                    Interlocked.Add(ref _wireSent, length);
                    buffer = buffer.Slice(n);
                }

                reader.AdvanceTo(buffer.End);
                if (result.IsCompleted)
                {
                    // The writer is done: a FIN tells the peer the stream ended cleanly.
                    _socket.Shutdown(SocketShutdown.Send);
                    break;
                }
            }

            await reader.CompleteAsync().ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException or IOException)
        {
            // The socket failed or was closed: the engine's next flush fails (see AbortAwareWriter).
            await reader.CompleteAsync(Failure("Writing to", ex)).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(raw);
            ArrayPool<byte>.Shared.Return(frame);
        }
    }

    private async Task ReceivePumpAsync()
    {
        byte[] header = new byte[FrameFormat.HeaderSize];
        byte[] payload = ArrayPool<byte>.Shared.Rent(FrameFormat.MaxPayload);
        PipeWriter writer = _incoming.Writer;
        Exception? failure = null;
        try
        {
            while (await ReceiveExactlyAsync(header, allowEnd: true).ConfigureAwait(false))
            {
                (int raw, int length, byte kind) = FrameFormat.ReadHeader(header);
                await ReceiveExactlyAsync(payload.AsMemory(0, length), allowEnd: false).ConfigureAwait(false);
                FrameFormat.Decode(payload.AsSpan(0, length), kind, writer.GetSpan(raw)[..raw]);
                writer.Advance(raw);
                FlushResult flushed = await writer.FlushAsync().ConfigureAwait(false);
                if (flushed.IsCompleted)
                {
                    break; // the engine stopped reading
                }
            }
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException or IOException or InvalidDataException)
        {
            failure = Failure("Reading from", ex);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(payload);
        }

        await writer.CompleteAsync(failure).ConfigureAwait(false);
        SignalClosed();
    }

    private async Task SendAllAsync(ReadOnlyMemory<byte> bytes)
    {
        while (bytes.Length > 0)
        {
            int sent = await _socket.SendAsync(bytes, SocketFlags.None).ConfigureAwait(false);
            bytes = bytes[sent..];
        }
    }

    /// <summary>Fills <paramref name="buffer"/>; false on a clean end before its first byte (when allowed).</summary>
    private async Task<bool> ReceiveExactlyAsync(Memory<byte> buffer, bool allowEnd)
    {
        int filled = 0;
        while (filled < buffer.Length)
        {
            int n = await _socket.ReceiveAsync(buffer[filled..], SocketFlags.None).ConfigureAwait(false);
            if (n == 0)
            {
                if (filled == 0 && allowEnd)
                {
                    return false;
                }

                throw new IOException($"the connection ended inside a frame ({filled} of {buffer.Length} bytes)");
            }

            filled += n;
        }

        return true;
    }

    private TransportException Failure(string operation, Exception cause) =>
        _aborted ?? new TransportException($"{operation} the migration connection {RemoteDescription} failed: {cause.Message}.", cause);

    private void SignalClosed()
    {
        try
        {
            _closed.Cancel();
        }
        catch (ObjectDisposedException)
        {
            // Disposed concurrently.
        }
    }

    private void ThrowIfAborted()
    {
        if (_aborted is { } error)
        {
            throw error;
        }
    }

    /// <summary>The input pipe, failing with the abort error once the connection was aborted.</summary>
    private sealed class AbortAwareReader(TcpzConnection owner) : PipeReader
    {
        private PipeReader Inner => owner._incoming.Reader;

        public override async ValueTask<ReadResult> ReadAsync(CancellationToken cancellationToken = default)
        {
            owner.ThrowIfAborted();
            ReadResult result = await Inner.ReadAsync(cancellationToken).ConfigureAwait(false);
            owner.ThrowIfAborted();
            return result;
        }

        public override bool TryRead(out ReadResult result)
        {
            owner.ThrowIfAborted();
            return Inner.TryRead(out result);
        }

        public override void AdvanceTo(SequencePosition consumed) => Inner.AdvanceTo(consumed);

        public override void AdvanceTo(SequencePosition consumed, SequencePosition examined) => Inner.AdvanceTo(consumed, examined);

        public override void CancelPendingRead() => Inner.CancelPendingRead();

        public override void Complete(Exception? exception = null) => Inner.Complete(exception);
    }

    /// <summary>The output pipe, failing with the abort error (or the send pump's failure).</summary>
    private sealed class AbortAwareWriter(TcpzConnection owner) : PipeWriter
    {
        private PipeWriter Inner => owner._outgoing.Writer;

        public override void Advance(int bytes) => Inner.Advance(bytes);

        public override Memory<byte> GetMemory(int sizeHint = 0) => Inner.GetMemory(sizeHint);

        public override Span<byte> GetSpan(int sizeHint = 0) => Inner.GetSpan(sizeHint);

        public override void CancelPendingFlush() => Inner.CancelPendingFlush();

        public override void Complete(Exception? exception = null) => Inner.Complete(exception);

        public override async ValueTask<FlushResult> FlushAsync(CancellationToken cancellationToken = default)
        {
            owner.ThrowIfAborted();
            FlushResult result = await Inner.FlushAsync(cancellationToken).ConfigureAwait(false);
            owner.ThrowIfAborted();
            if (result.IsCompleted && owner._sending.IsCompleted)
            {
                // The send pump ended: the socket failed or was closed. Fail here, at the point of failure.
                await owner._sending.ConfigureAwait(false);
                throw new TransportException($"Writing to the migration connection {owner.RemoteDescription} failed: the connection is closed.");
            }

            return result;
        }
    }
}
