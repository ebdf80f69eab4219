using Modular.Abstractions.Plugins;

namespace Modular.Abstractions.Transports;

/// <summary>
/// A transport plugin: a factory for migration connections on one URI scheme. Export it with
/// <see cref="TransportMetadataAttribute"/>. The factory is shared by every migration in the process,
/// so it keeps no per-connection state.
/// </summary>
public interface IMigrationTransport : IProbePlugin
{
    /// <summary>Opens a connection to a listening peer (the migration source does this).</summary>
    /// <param name="endpoint">Where to connect; its scheme is this transport's.</param>
    /// <param name="cancellationToken">Cancels the attempt.</param>
    /// <returns>The connected stream: forward path out, return path in.</returns>
    /// <exception cref="TransportException">Nobody listens there, or the endpoint is malformed.</exception>
    ValueTask<IMigrationConnection> ConnectAsync(TransportEndpoint endpoint, CancellationToken cancellationToken = default);

    /// <summary>Starts listening for one or more incoming migrations (the destination does this).</summary>
    /// <param name="endpoint">Where to listen; port 0 picks a free port, reported by <see cref="IMigrationListener.Endpoint"/>.</param>
    /// <param name="cancellationToken">Cancels the attempt.</param>
    /// <exception cref="TransportException">The endpoint is taken or malformed.</exception>
    ValueTask<IMigrationListener> ListenAsync(TransportEndpoint endpoint, CancellationToken cancellationToken = default);
}

/// <summary>A bound listener waiting for migration connections.</summary>
public interface IMigrationListener : IAsyncDisposable
{
    /// <summary>The endpoint actually bound (with the real port when port 0 was asked for).</summary>
    TransportEndpoint Endpoint { get; }

    /// <summary>Waits for the next connection.</summary>
    /// <param name="cancellationToken">Stops waiting; the listener stays usable.</param>
    ValueTask<IMigrationConnection> AcceptAsync(CancellationToken cancellationToken = default);
}

/// <summary>
/// One migration connection. <see cref="Transport"/> carries the forward path (source to destination)
/// in one direction and the return path in the other, like QEMU's socket return path.
/// Optional capabilities are extra interfaces: <see cref="IExtraChannels"/>, <see cref="IPageChannel"/>.
/// </summary>
public interface IMigrationConnection : IAsyncDisposable
{
    /// <summary>The duplex byte pipe: write to <c>Output</c>, read from <c>Input</c>.</summary>
    System.IO.Pipelines.IDuplexPipe Transport { get; }

    /// <summary>Cancelled when the connection has closed, for whatever reason.</summary>
    CancellationToken Closed { get; }

    /// <summary>Describes the peer for logs and errors, for example <c>tcp:127.0.0.1:4444</c>.</summary>
    string RemoteDescription { get; }

    /// <summary>
    /// Tears the connection down now: pending and later reads and writes on both ends fail promptly
    /// with an error carrying <paramref name="reason"/>.
    /// </summary>
    /// <param name="reason">Why the connection is aborted; surfaces in the peer's error where possible.</param>
    void Abort(Exception? reason = null);
}

/// <summary>Optional: a connection that can open further independent byte channels (postcopy preempt, multifd).</summary>
public interface IExtraChannels
{
    /// <summary>Opens (on the connecting side) or accepts (on the listening side) channel number <paramref name="index"/>.</summary>
    /// <param name="index">1 and up; 0 is the main connection.</param>
    /// <param name="cancellationToken">Cancels the attempt.</param>
    ValueTask<System.IO.Pipelines.IDuplexPipe> OpenChannelAsync(int index, CancellationToken cancellationToken = default);
}

/// <summary>
/// Optional: a one-sided page channel (RDMA READ): the destination reads a page of the source's RAM
/// by address without involving the source's CPU.
/// </summary>
public interface IPageChannel
{
    /// <summary>Source side: exposes a RAM block for remote reads; returns the descriptor to send to the destination.</summary>
    /// <param name="blockId">The RAM block name, as in the stream.</param>
    /// <param name="hostAddress">Start of the block in the source's address space.</param>
    /// <param name="length">Length in bytes.</param>
    ReadOnlyMemory<byte> ExposeRegion(string blockId, nint hostAddress, ulong length);

    /// <summary>Destination side: records a region descriptor received from the source.</summary>
    /// <param name="blockId">The RAM block name.</param>
    /// <param name="descriptor">What <see cref="ExposeRegion"/> returned on the source.</param>
    void AttachRegion(string blockId, ReadOnlyMemory<byte> descriptor);

    /// <summary>Destination side: reads <paramref name="destination"/>.Length bytes at <paramref name="offset"/> of the block.</summary>
    /// <param name="blockId">The RAM block name.</param>
    /// <param name="offset">Offset in the block.</param>
    /// <param name="destination">Receives the bytes.</param>
    /// <param name="cancellationToken">Cancels the read.</param>
    ValueTask ReadAsync(string blockId, ulong offset, Memory<byte> destination, CancellationToken cancellationToken = default);
}

/// <summary>A transport could not connect, listen or carry data. The message names the endpoint.</summary>
public class TransportException : Exception
{
    /// <summary>Creates the exception.</summary>
    public TransportException() { }

    /// <summary>Creates the exception with a message.</summary>
    /// <param name="message">What failed, naming the endpoint and what to do.</param>
    public TransportException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and its cause.</summary>
    /// <param name="message">What failed, naming the endpoint and what to do.</param>
    /// <param name="innerException">The cause.</param>
    public TransportException(string message, Exception innerException) : base(message, innerException) { }
}
