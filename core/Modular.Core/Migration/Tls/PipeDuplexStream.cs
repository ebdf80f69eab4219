using System.Buffers;
using System.IO.Pipelines;

namespace Modular.Core.Migration.Tls;

/// <summary>
/// A duplex <see cref="Stream"/> over a transport's <see cref="IDuplexPipe"/>, for <see cref="System.Net.Security.SslStream"/>
/// to run on: reads come from the pipe's input, writes go to its output and are flushed at once.
/// Disposing it leaves the pipe alone; the connection that owns the pipe ends it.
/// </summary>
/// <remarks>
/// Once <see cref="CoalesceWrites"/> is set (after the handshake), writes are copied into the pipe
/// and flushed only when <see cref="CoalesceBytes"/> have gathered or the writer flushes: TLS writes
/// one record of at most 16 KiB at a time, and a flush per record woke the transport's sender for
/// every one of them.
/// </remarks>
internal sealed class PipeDuplexStream : System.IO.Stream
{
    /// <summary>Unflushed bytes that make a coalescing write flush.</summary>
    internal const int CoalesceBytes = 256 * 1024;

    private readonly System.IO.Stream _input;
    private readonly System.IO.Stream _output;
    private readonly PipeWriter _writer;
    private int _unflushed;

    internal PipeDuplexStream(IDuplexPipe pipe)
    {
        _input = pipe.Input.AsStream(leaveOpen: true);
        _output = pipe.Output.AsStream(leaveOpen: true);
        _writer = pipe.Output;
    }

    /// <summary>Whether writes wait for a flush (or <see cref="CoalesceBytes"/>) before they go out. Off during the handshake.</summary>
    internal bool CoalesceWrites { get; set; }

    public override bool CanRead => true;

    public override bool CanSeek => false;

    public override bool CanWrite => true;

    public override long Length => throw new NotSupportedException();

    public override long Position
    {
        get => throw new NotSupportedException();
        set => throw new NotSupportedException();
    }

    public override int Read(byte[] buffer, int offset, int count) => _input.Read(buffer, offset, count);

    public override int Read(Span<byte> buffer) => _input.Read(buffer);

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        _input.ReadAsync(buffer, offset, count, cancellationToken);

    public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) =>
        _input.ReadAsync(buffer, cancellationToken);

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        if (!CoalesceWrites)
        {
            _output.Write(buffer);
            return;
        }

        _writer.Write(buffer);
        if ((_unflushed += buffer.Length) >= CoalesceBytes)
        {
            Flush();
        }
    }

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (!CoalesceWrites)
        {
            return _output.WriteAsync(buffer, cancellationToken);
        }

        _writer.Write(buffer.Span);
        return (_unflushed += buffer.Length) >= CoalesceBytes ? new ValueTask(FlushAsync(cancellationToken)) : ValueTask.CompletedTask;
    }

    public override void Flush()
    {
        _unflushed = 0;
        _output.Flush();
    }

    public override Task FlushAsync(CancellationToken cancellationToken)
    {
        _unflushed = 0;
        return _output.FlushAsync(cancellationToken);
    }

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();
}
