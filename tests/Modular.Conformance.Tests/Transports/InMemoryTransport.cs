using System.Buffers;
using System.Collections.Concurrent;
using System.IO.Pipelines;
using System.Threading.Channels;
using Microsoft.Win32.SafeHandles;
using Modular.Abstractions.Plugins;
using Modular.Abstractions.Transports;

namespace Modular.Conformance.Tests.Transports;

/// <summary>What an <see cref="InMemoryTransport"/> gets wrong on purpose.</summary>
internal enum TransportFlaw
{
    None = 0,
    CorruptsOneByte,
    ReordersTwoWrites,
    NoBackpressure,
    AbortStaysLocal,
    AbortLooksLikeACleanEnd,
    UnclearErrors,
    LeaksAFileDescriptor,
}

/// <summary>
/// <c>mem:NAME</c>: a transport over in-process pipes, correct unless given a <see cref="TransportFlaw"/>.
/// Listening on <c>mem:auto</c> picks a fresh name.
/// </summary>
[TransportMetadata("mem")]
internal sealed class InMemoryTransport(TransportFlaw flaw = TransportFlaw.None) : IMigrationTransport
{
    // Leaked on purpose by LeaksAFileDescriptor; kept reachable so no finalizer closes them.
    private static readonly ConcurrentBag<SafeFileHandle> Leaked = new();
    private readonly ConcurrentDictionary<string, Listener> _listeners = new();
    private int _next;

    public PluginAvailability Probe() => PluginAvailability.Usable;

    public ValueTask<IMigrationListener> ListenAsync(TransportEndpoint endpoint, CancellationToken cancellationToken = default)
    {
        string name = endpoint.Address == "auto" ? $"auto{Interlocked.Increment(ref _next)}" : endpoint.Address;
        var listener = new Listener(this, new TransportEndpoint("mem", name));
        if (!_listeners.TryAdd(name, listener))
        {
            throw flaw == TransportFlaw.UnclearErrors
                ? new InvalidOperationException("duplicate key")
                : new TransportException($"Cannot listen on mem:{name}: another listener has it.");
        }

        return ValueTask.FromResult<IMigrationListener>(listener);
    }

    public async ValueTask<IMigrationConnection> ConnectAsync(TransportEndpoint endpoint, CancellationToken cancellationToken = default)
    {
        if (!_listeners.TryGetValue(endpoint.Address, out Listener? listener))
        {
            throw flaw == TransportFlaw.UnclearErrors
                ? new KeyNotFoundException("not found")
                : new TransportException($"Cannot connect to {endpoint}: nobody listens there.");
        }

        long pause = flaw == TransportFlaw.NoBackpressure ? 0 : 1 << 20;
        var options = new PipeOptions(pauseWriterThreshold: pause, resumeWriterThreshold: pause / 2, useSynchronizationContext: false);
        Pipe forward = new(options), back = new(options);
        var source = new Connection(forward.Writer, back.Reader, endpoint.ToString(), flaw, flaws: true);
        var destination = new Connection(back.Writer, forward.Reader, "mem:peer", flaw, flaws: false);
        if (flaw == TransportFlaw.LeaksAFileDescriptor)
        {
            Leaked.Add(File.OpenHandle("/dev/null"));
        }

        await listener.Accepts.Writer.WriteAsync(destination, cancellationToken).ConfigureAwait(false);
        return source;
    }

    private sealed class Listener(InMemoryTransport owner, TransportEndpoint endpoint) : IMigrationListener
    {
        public Channel<IMigrationConnection> Accepts { get; } = Channel.CreateUnbounded<IMigrationConnection>();

        public TransportEndpoint Endpoint => endpoint;

        public ValueTask<IMigrationConnection> AcceptAsync(CancellationToken cancellationToken = default) => Accepts.Reader.ReadAsync(cancellationToken);

        public ValueTask DisposeAsync()
        {
            owner._listeners.TryRemove(endpoint.Address, out _);
            return ValueTask.CompletedTask;
        }
    }

    private sealed class Connection : IMigrationConnection, IDuplexPipe
    {
        private readonly PipeWriter _rawOutput;
        private readonly PipeReader _rawInput;
        private readonly TransportFlaw _flaw;
        private readonly CancellationTokenSource _closed = new();
        private volatile Exception? _aborted;

        public Connection(PipeWriter output, PipeReader input, string description, TransportFlaw flaw, bool flaws)
        {
            _rawOutput = output;
            _rawInput = input;
            _flaw = flaw;
            RemoteDescription = description;
            Input = new AbortableReader(this);
            Output = flaws && flaw is TransportFlaw.CorruptsOneByte or TransportFlaw.ReordersTwoWrites ? new FlawedWriter(output, flaw) : output;
        }

        public IDuplexPipe Transport => this;

        public PipeReader Input { get; }

        public PipeWriter Output { get; }

        public CancellationToken Closed => _closed.Token;

        public string RemoteDescription { get; }

        public void Abort(Exception? reason = null)
        {
            var error = new TransportException($"The in-memory connection {RemoteDescription} was aborted: {reason?.Message}.", reason ?? new OperationCanceledException());
            _aborted = error;
            _rawInput.CancelPendingRead();
            switch (_flaw)
            {
                case TransportFlaw.AbortStaysLocal:
                    break;
                case TransportFlaw.AbortLooksLikeACleanEnd:
                    _rawOutput.Complete();
                    break;
                default:
                    _rawOutput.Complete(error);
                    break;
            }

            SignalClosed();
        }

        public ValueTask DisposeAsync()
        {
            _rawOutput.Complete();
            _rawInput.Complete();
            SignalClosed();
            return ValueTask.CompletedTask;
        }

        private void SignalClosed()
        {
            try
            {
                _closed.Cancel();
            }
            catch (ObjectDisposedException)
            {
            }
        }

        private sealed class AbortableReader(Connection owner) : PipeReader
        {
            public override async ValueTask<ReadResult> ReadAsync(CancellationToken cancellationToken = default)
            {
                if (owner._aborted is { } early)
                {
                    throw early;
                }

                ReadResult result;
                try
                {
                    result = await owner._rawInput.ReadAsync(cancellationToken).ConfigureAwait(false);
                }
                catch
                {
                    owner.SignalClosed();
                    throw;
                }

                if (owner._aborted is { } error)
                {
                    throw error;
                }

                if (result.IsCompleted)
                {
                    owner.SignalClosed();
                }

                return result;
            }

            public override bool TryRead(out ReadResult result) => owner._rawInput.TryRead(out result);

            public override void AdvanceTo(SequencePosition consumed) => owner._rawInput.AdvanceTo(consumed);

            public override void AdvanceTo(SequencePosition consumed, SequencePosition examined) => owner._rawInput.AdvanceTo(consumed, examined);

            public override void CancelPendingRead() => owner._rawInput.CancelPendingRead();

            public override void Complete(Exception? exception = null) => owner._rawInput.Complete(exception);
        }
    }

    /// <summary>Stages each write until the flush, then damages the stream as its flaw says.</summary>
    private sealed class FlawedWriter(PipeWriter inner, TransportFlaw flaw) : PipeWriter
    {
        private const long CorruptAt = 1_000_003;
        private byte[] _staged = new byte[256 * 1024];
        private byte[]? _heldBack;
        private int _length;
        private long _offset;
        private int _flushes;

        public override void Advance(int bytes) => _length += bytes;

        public override Memory<byte> GetMemory(int sizeHint = 0)
        {
            if (_staged.Length - _length < Math.Max(sizeHint, 1))
            {
                Array.Resize(ref _staged, Math.Max(_staged.Length * 2, _length + sizeHint));
            }

            return _staged.AsMemory(_length);
        }

        public override Span<byte> GetSpan(int sizeHint = 0) => GetMemory(sizeHint).Span;

        public override void CancelPendingFlush() => inner.CancelPendingFlush();

        public override void Complete(Exception? exception = null)
        {
            WriteStaged();
            inner.Complete(exception);
        }

        public override ValueTask<FlushResult> FlushAsync(CancellationToken cancellationToken = default)
        {
            WriteStaged();
            return inner.FlushAsync(cancellationToken);
        }

        private void WriteStaged()
        {
            Span<byte> data = _staged.AsSpan(0, _length);
            if (flaw == TransportFlaw.CorruptsOneByte && _offset <= CorruptAt && CorruptAt < _offset + _length)
            {
                data[(int)(CorruptAt - _offset)] ^= 0x20;
            }

            _offset += _length;
            _length = 0;
            _flushes++;
            if (flaw == TransportFlaw.ReordersTwoWrites && _flushes == 50 && data.Length > 0)
            {
                _heldBack = data.ToArray();
                return;
            }

            inner.Write(data);
            if (_heldBack is not null && data.Length > 0)
            {
                inner.Write(_heldBack);
                _heldBack = null;
            }
        }
    }
}
