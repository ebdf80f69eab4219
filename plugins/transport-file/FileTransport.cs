using System.IO.Pipelines;
using Modular.Abstractions.Plugins;
using Modular.Abstractions.Transports;
using Modular.Transports.Shared;

namespace Modular.Transports.Files;

/// <summary>
/// <c>file:PATH</c>: the stream saved to, or loaded from, a file (QEMU's file: migration). Connecting
/// creates or truncates the file for writing; the return path reads as empty at once and has no
/// peer. Listening checks the file is there; the one accept opens it for reading, and what the
/// destination writes to the return path is discarded. Stateless.
/// </summary>
[TransportMetadata("file")]
public sealed class FileTransport : IMigrationTransport
{
    internal const int BufferSize = 1 << 20;

    /// <inheritdoc/>
    public PluginAvailability Probe() => PluginAvailability.Usable;

    /// <inheritdoc/>
    public ValueTask<IMigrationConnection> ConnectAsync(TransportEndpoint endpoint, CancellationToken cancellationToken = default)
    {
        string path = PathOf(endpoint);
        FileStream stream;
        try
        {
            stream = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.Read, bufferSize: 0, FileOptions.Asynchronous);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or NotSupportedException or ArgumentException)
        {
            throw new TransportException($"Cannot write the migration file '{path}' ({endpoint}): {ex.Message}", ex);
        }

        var pipe = new StreamDuplex(
            PipeReader.Create(System.IO.Stream.Null),
            PipeWriter.Create(stream, new StreamPipeWriterOptions(minimumBufferSize: BufferSize)));
        return ValueTask.FromResult<IMigrationConnection>(new FileConnection(pipe, endpoint.ToString()));
    }

    /// <inheritdoc/>
    public ValueTask<IMigrationListener> ListenAsync(TransportEndpoint endpoint, CancellationToken cancellationToken = default)
    {
        string path = Path.GetFullPath(PathOf(endpoint));
        if (!File.Exists(path))
        {
            throw new TransportException($"Cannot read the migration file '{path}' ({endpoint}): it does not exist.");
        }

        return ValueTask.FromResult<IMigrationListener>(new FileListener(new TransportEndpoint("file", path), path));
    }

    private static string PathOf(TransportEndpoint endpoint)
    {
        ArgumentNullException.ThrowIfNull(endpoint);
        if (string.IsNullOrWhiteSpace(endpoint.Address))
        {
            throw new TransportException($"'{endpoint}' is not a valid file endpoint: file:PATH expected, for example file:/tmp/vm.state.");
        }

        return endpoint.Address;
    }

    private sealed record StreamDuplex(PipeReader Input, PipeWriter Output) : IDuplexPipe;

    private sealed class FileListener(TransportEndpoint endpoint, string path) : IMigrationListener
    {
        private int _accepted;

        public TransportEndpoint Endpoint => endpoint;

        public ValueTask<IMigrationConnection> AcceptAsync(CancellationToken cancellationToken = default)
        {
            if (Interlocked.Exchange(ref _accepted, 1) != 0)
            {
                throw new TransportException($"{endpoint} was already accepted once: a file carries one migration. Listen again to read it again.");
            }

            FileStream stream;
            try
            {
                stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, bufferSize: 0, FileOptions.Asynchronous | FileOptions.SequentialScan);
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                throw new TransportException($"Cannot read the migration file '{path}' ({endpoint}): {ex.Message}", ex);
            }

            var pipe = new StreamDuplex(
                PipeReader.Create(stream, new StreamPipeReaderOptions(bufferSize: BufferSize, minimumReadSize: BufferSize / 4)),
                PipeWriter.Create(System.IO.Stream.Null));
            return ValueTask.FromResult<IMigrationConnection>(new FileConnection(pipe, endpoint.ToString()));
        }

        public ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }

    private sealed class FileConnection : IMigrationConnection
    {
        private readonly StreamDuplex _inner;
        private readonly AbortablePipe _pipe;
        private readonly CancellationTokenSource _closed = new();

        public FileConnection(StreamDuplex inner, string description)
        {
            _inner = inner;
            RemoteDescription = description;
            _pipe = new AbortablePipe(inner, description, () => { });
        }

        public IDuplexPipe Transport => _pipe;

        public CancellationToken Closed => _closed.Token;

        public string RemoteDescription { get; }

        public void Abort(Exception? reason = null)
        {
            _pipe.Abort(reason);
            _closed.Cancel();
        }

        /// <summary>Completes both pipes, which flushes what was written and closes the file.</summary>
        public async ValueTask DisposeAsync()
        {
            await _inner.Output.CompleteAsync().ConfigureAwait(false);
            await _inner.Input.CompleteAsync().ConfigureAwait(false);
            _closed.Cancel();
            _closed.Dispose();
        }
    }
}
