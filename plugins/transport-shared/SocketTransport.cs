using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using Modular.Abstractions.Transports;
using Pipelines.Sockets.Unofficial;

namespace Modular.Transports.Shared;

/// <summary>
/// Pipe options for migration sockets. The defaults (64 KiB pause threshold, 4 KiB segments) move about
/// half of what a plain socket moves on loopback (DESIGN.md §7); RAM pages are written in bulk, so let
/// megabytes queue up and use large segments. Measured here (2 GiB in 64 KiB writes, loaded 2-core
/// machine): 2 MiB/64 KiB beat 8 MiB/64 KiB and 32 MiB/256 KiB; inline schedulers were no better.
/// </summary>
internal static class SocketPipeTuning
{
    public const int SegmentSize = 256 * 1024;
    public const long PauseWriterThreshold = 4 * 1024 * 1024;
    public const long ResumeWriterThreshold = 2 * 1024 * 1024;

    public static PipeOptions Options { get; } = new(
        pool: RecyclingMemoryPool.Segments,
        readerScheduler: PipeScheduler.ThreadPool,
        writerScheduler: PipeScheduler.ThreadPool,
        pauseWriterThreshold: PauseWriterThreshold,
        resumeWriterThreshold: ResumeWriterThreshold,
        minimumSegmentSize: SegmentSize,
        useSynchronizationContext: false);

    public static void Configure(Socket socket)
    {
        socket.SendBufferSize = 4 * 1024 * 1024;
        socket.ReceiveBufferSize = 4 * 1024 * 1024;
        if (socket.AddressFamily is AddressFamily.InterNetwork or AddressFamily.InterNetworkV6)
        {
            socket.NoDelay = true;
        }
    }

    /// <summary>
    /// Inline pipe options (the return path): a flush sends at once on the flushing thread and a
    /// received message reaches its reader on the receiving thread, without a hop through the
    /// thread pool. Extra channels go further (<see cref="ThreadedSocketPipe"/>).
    /// </summary>
    public static PipeOptions ChannelOptions { get; } = new(
        pool: RecyclingMemoryPool.Segments,
        readerScheduler: PipeScheduler.Inline,
        writerScheduler: PipeScheduler.Inline,
        pauseWriterThreshold: PauseWriterThreshold,
        resumeWriterThreshold: ResumeWriterThreshold,
        minimumSegmentSize: SegmentSize,
        useSynchronizationContext: false);

    /// <summary>
    /// The main connection. Its two directions differ: the connecting end (the migration source)
    /// writes bulk pages and reads the return path; the accepting end (the destination) the reverse.
    /// Both ends get a <see cref="ThreadedSocketPipe"/>, whose receive thread blocks in recv(2) and
    /// runs the reader inline. The source sends bulk pages with one sendmsg(2) per flush on the
    /// migration thread, RAM pages by reference (<see cref="GatherSocketWriter"/>). Its receive thread also answers page requests on the preempt channel without leaving it. The
    /// destination's receive thread parses and places the pages, and its return-path messages go
    /// out at once on the writing thread.
    /// </summary>
    /// <remarks>
    /// Measured on this 2-core host, 1 GiB over tcp, alternating runs of one build each:
    /// <list type="bullet">
    /// <item>Pipelines.Sockets.Unofficial with everything inline but the source's bulk sends (the
    /// previous tuning, still selectable: <c>MODULAR_SOCKET_PIPES=pipelines-sockets</c>): idle
    /// 0.71-0.93 s, destination CPU 0.62-0.85 s; postcopy 1.33-2.49 s. The source's return path
    /// took a median 220 us and p90 2.3 ms per request (an epoll thread, then a pool thread behind
    /// the bulk sends' work items).</item>
    /// <item>These threads: idle 0.61-0.85 s, destination CPU 0.45-0.74 s; postcopy 1.21-1.74 s;
    /// return path 45-70 us median, p90 0.2-0.9 ms.</item>
    /// <item>The source's sends as a gather list on the migration thread instead of a send loop on
    /// the pool over copied pages (three alternating runs each, idle 1 GiB): tcp 0.71-0.80 s ->
    /// 0.54-0.60 s, source CPU 0.66-0.73 s -> 0.47-0.49 s. Over unix it was first kept off: with the
    /// code of that day one sending thread gave a dirtying 1 GiB guest's downtime a heavy tail (109-962
    /// ms in five runs). Session 12 measured it again, alternating with the send loop over copied
    /// pages. Idle 1 GiB, six runs each: 0.29-0.39 s (mean 0.33 s) against 0.30-0.61 s (mean 0.41 s),
    /// source CPU 0.25-0.34 s against 0.28-0.65 s. Dirtying, eight runs: downtime 86-247 ms against
    /// 77-212 ms in three, no tail. So unix sends this way too.</item>
    /// </list>
    /// </remarks>
    public static ISocketPipe Wrap(Socket socket, string name, bool connecting)
    {
        if (UsePipelinesSockets)
        {
            return new PipelinesSocketPipe(connecting
                ? SocketConnection.Create(socket, Options, ChannelOptions, SocketConnectionOptions.InlineReads, name)
                : SocketConnection.Create(socket, ChannelOptions, ChannelOptions, SocketConnectionOptions.InlineWrites | SocketConnectionOptions.InlineReads, name));
        }

        return connecting
            ? new ThreadedSocketPipe(socket, name, "migration recv", gatherSends: true, spliceSends: socket.AddressFamily == AddressFamily.Unix && SpliceSends)
            : new ThreadedSocketPipe(socket, name, "migration recv", latencyReceive: false);
    }

    /// <summary>
    /// Whether a unix source splices its pages (<see cref="GatherSocketWriter"/>'s splice path):
    /// on unless <c>MODULAR_UNIX_SPLICE=off</c> is in the environment (for comparison; tcp never splices).
    /// </summary>
    internal static bool SpliceSends { get; } =
        !string.Equals(Environment.GetEnvironmentVariable("MODULAR_UNIX_SPLICE"), "off", StringComparison.Ordinal);

    /// <summary>
    /// <c>MODULAR_SOCKET_PIPES=pipelines-sockets</c> in the environment runs main connections on
    /// Pipelines.Sockets.Unofficial instead (for comparison; extra channels keep their threads).
    /// </summary>
    internal static bool UsePipelinesSockets { get; } =
        string.Equals(Environment.GetEnvironmentVariable("MODULAR_SOCKET_PIPES"), "pipelines-sockets", StringComparison.Ordinal);
}

/// <summary>
/// A migration connection over a connected socket (tcp or unix). Extra channels (<see cref="IExtraChannels"/>)
/// are further sockets to the same endpoint (<see cref="SocketChannelOpener"/>), each a
/// <see cref="ThreadedSocketPipe"/> built for latency; raw channels (<see cref="IRawChannels"/>) are
/// such sockets too, opened with the same handshake, each a <see cref="SocketRawChannel"/> for
/// blocking calls over native memory. Both kinds end with the connection.
/// </summary>
internal class SocketMigrationConnection : IMigrationConnection, IExtraChannels, IRawChannels
{
    private readonly ISocketPipe _connection;
    private readonly AbortablePipe _pipe;
    private readonly SocketChannelOpener _channels;
    private readonly List<(ThreadedSocketPipe Channel, AbortablePipe Pipe)> _extra = [];
    private readonly List<SocketRawChannel> _raw = [];
    private bool _rawTaken; // under the lock of _raw: the connection ended, and a channel opened now is aborted
    private readonly CancellationTokenSource _closed = new();
    private int _ended;

    /// <summary>A unix socket's connection also receives directly (<see cref="UnixSocketMigrationConnection"/>); a tcp one does not.</summary>
    public static SocketMigrationConnection Create(ISocketPipe connection, string remoteDescription, SocketChannelOpener channels) =>
        connection.Socket.AddressFamily == AddressFamily.Unix
            ? new UnixSocketMigrationConnection(connection, remoteDescription, channels)
            : new SocketMigrationConnection(connection, remoteDescription, channels);

    /// <summary>The main connection's pipe.</summary>
    private protected ISocketPipe Connection => _connection;

    /// <summary>True once aborted.</summary>
    private protected bool IsAborted => _pipe.IsAborted;

    protected SocketMigrationConnection(ISocketPipe connection, string remoteDescription, SocketChannelOpener channels)
    {
        _connection = connection;
        RemoteDescription = remoteDescription;
        _channels = channels;
        _pipe = new AbortablePipe(connection, remoteDescription, SignalClosed, EndError);
    }

    /// <inheritdoc/>
    public async ValueTask<IDuplexPipe> OpenChannelAsync(int index, CancellationToken cancellationToken = default)
    {
        CheckCanOpen(index);
        Socket socket = await _channels.OpenAsync(index, RemoteDescription, cancellationToken).ConfigureAwait(false);
        string description = $"{RemoteDescription} (channel {index})";
        var channel = new ThreadedSocketPipe(socket, description);
        var pipe = new AbortablePipe(channel, description, static () => { }, () => channel.Error == SocketError.Success
            ? null
            : new SocketException((int)channel.Error, $"the channel ended abnormally ({channel.Error}); the peer aborted or the network failed"));
        lock (_extra)
        {
            _extra.Add((channel, pipe));
        }

        return pipe;
    }

    /// <inheritdoc/>
    public async ValueTask<IRawChannel> OpenRawChannelAsync(int index, CancellationToken cancellationToken = default)
    {
        CheckCanOpen(index);
        Socket socket = await _channels.OpenAsync(index, RemoteDescription, cancellationToken).ConfigureAwait(false);
        SocketRawChannel channel;
        try
        {
            channel = new SocketRawChannel(socket, RemoteDescription, index);
        }
        catch
        {
            socket.Dispose();
            throw;
        }

        lock (_raw)
        {
            if (!_rawTaken)
            {
                _raw.Add(channel);
                return channel;
            }
        }

        // Aborted or disposed while the channel was opening.
        channel.Abort();
        throw new TransportException($"Cannot open channel {index} of {RemoteDescription}: the connection has ended.");
    }

    private void CheckCanOpen(int index)
    {
        if (index < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(index), index, "Channel 0 is the main connection; extra channels are numbered from 1.");
        }

        if (_pipe.IsAborted || _closed.IsCancellationRequested)
        {
            throw new TransportException($"Cannot open channel {index} of {RemoteDescription}: the connection has ended.");
        }
    }

    public IDuplexPipe Transport => _pipe;

    public CancellationToken Closed => _closed.Token;

    public string RemoteDescription { get; }

    /// <summary>
    /// Fails local reads and writes with <paramref name="reason"/> and resets the socket (linger 0), so
    /// the peer's reads fail at once instead of waiting for a timeout.
    /// </summary>
    public void Abort(Exception? reason = null)
    {
        _pipe.Abort(reason);
        Reset(_connection.Socket);
        _connection.Close();
        foreach ((ThreadedSocketPipe channel, AbortablePipe pipe) in TakeChannels())
        {
            pipe.Abort(reason);
            Reset(channel.Socket);
            channel.Close();
        }

        foreach (SocketRawChannel raw in TakeRawChannels())
        {
            raw.Abort();
        }
    }

    // Close the socket ourselves first: closing the pipe shuts down with a FIN that the peer cannot
    // tell from a finished stream; linger 0 makes close send a RST.
    private static void Reset(Socket socket)
    {
        try
        {
            socket.LingerState = new LingerOption(true, 0);
            socket.Close();
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
            // Already closed: nothing to reset.
        }
    }

    private List<(ThreadedSocketPipe, AbortablePipe)> TakeChannels()
    {
        lock (_extra)
        {
            var taken = new List<(ThreadedSocketPipe, AbortablePipe)>(_extra);
            _extra.Clear();
            return taken;
        }
    }

    private List<SocketRawChannel> TakeRawChannels()
    {
        lock (_raw)
        {
            _rawTaken = true;
            var taken = new List<SocketRawChannel>(_raw);
            _raw.Clear();
            return taken;
        }
    }

    /// <summary>
    /// Completes the output and closes the socket. Bytes still queued in the send pipe may be lost, so
    /// a sender waits for the peer's acknowledgement (QEMU: SHUT on the return path) before disposing.
    /// </summary>
    public ValueTask DisposeAsync()
    {
        foreach ((ThreadedSocketPipe channel, AbortablePipe _) in TakeChannels())
        {
            channel.Close();
        }

        foreach (SocketRawChannel raw in TakeRawChannels())
        {
            raw.Dispose();
        }

        _connection.Close();
        SignalClosed();
        _closed.Dispose();
        return ValueTask.CompletedTask;
    }

    // The input ends without an error when the peer resets the connection; only the recorded socket
    // error tells a reset (the peer aborted) from an orderly close.
    private Exception? EndError() => _connection.Error == SocketError.Success
        ? null
        : new SocketException((int)_connection.Error,
            $"the connection ended abnormally ({_connection.Error}); the peer aborted or the network failed");

    private void SignalClosed()
    {
        if (Interlocked.Exchange(ref _ended, 1) == 0)
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
    }
}

/// <summary>
/// A unix socket's migration connection, which also receives the forward path's bytes straight into
/// the reader's memory (<see cref="IDirectReceive"/>; a precopy destination's pages into guest RAM).
/// </summary>
internal sealed class UnixSocketMigrationConnection(ISocketPipe connection, string remoteDescription, SocketChannelOpener channels)
    : SocketMigrationConnection(connection, remoteDescription, channels), IDirectReceive
{
    /// <inheritdoc/>
    /// <remarks>
    /// <para>Only on a <see cref="ThreadedSocketPipe"/> (not
    /// <c>MODULAR_SOCKET_PIPES=pipelines-sockets</c>), and not once aborted.</para>
    /// <para>Not tcp: measured on this 2-core host (idle 1 GiB, four alternating pairs), receiving
    /// directly made tcp slower, 0.31-0.41 s against 0.27-0.30 s, the source using more CPU
    /// (0.31-0.40 s against 0.25-0.30 s) while the destination saved little: the faster reader
    /// costs the loopback sender more per byte. Over unix the same change took 2 GiB from a mean of
    /// 0.88 s to 0.73 s, and with the source's splice to 0.56 s.</para>
    /// </remarks>
    public bool CanReceiveDirect => Connection is ThreadedSocketPipe threaded && !IsAborted && threaded.CanReceiveDirect;

    /// <inheritdoc/>
    public int ReceiveDirect(ReadOnlySpan<RawSegment> segments) =>
        Connection is ThreadedSocketPipe threaded && !IsAborted ? threaded.ReceiveDirect(segments) : 0;

    /// <inheritdoc/>
    public void GiveBack(ReadOnlySpan<byte> bytes)
    {
        if (Connection is not ThreadedSocketPipe threaded)
        {
            throw new InvalidOperationException($"{RemoteDescription} receives through its pipe only; nothing was received directly to hand back.");
        }

        threaded.GiveBack(bytes);
    }
}

/// <summary>A bound, listening socket that accepts migration connections.</summary>
internal sealed class SocketMigrationListener : IMigrationListener
{
    private readonly Socket _socket;
    private readonly Func<Socket, string> _describePeer;
    private readonly Action? _onDispose;

    public SocketMigrationListener(Socket socket, TransportEndpoint endpoint, Func<Socket, string> describePeer, Action? onDispose = null)
    {
        _socket = socket;
        Endpoint = endpoint;
        _describePeer = describePeer;
        _onDispose = onDispose;
    }

    public TransportEndpoint Endpoint { get; }

    public async ValueTask<IMigrationConnection> AcceptAsync(CancellationToken cancellationToken = default)
    {
        Socket accepted;
        try
        {
            accepted = await _socket.AcceptAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (SocketException ex)
        {
            throw new TransportException($"Accepting a migration connection on {Endpoint} failed: {ex.Message}.", ex);
        }
        catch (ObjectDisposedException ex)
        {
            throw new TransportException($"The listener on {Endpoint} is closed; start a new one to accept migrations.", ex);
        }

        SocketPipeTuning.Configure(accepted);
        string peer = _describePeer(accepted);
        return SocketMigrationConnection.Create(SocketPipeTuning.Wrap(accepted, peer, connecting: false), peer, new SocketChannelOpener.Acceptor(_socket, Endpoint.ToString()));
    }

    public ValueTask DisposeAsync()
    {
        _socket.Dispose();
        _onDispose?.Invoke();
        return ValueTask.CompletedTask;
    }
}

/// <summary>Connect and listen steps shared by tcp and unix.</summary>
internal static class SocketEndpoints
{
    public static async ValueTask<IMigrationConnection> ConnectAsync(EndPoint endPoint, ProtocolType protocol, TransportEndpoint uri, CancellationToken cancellationToken)
    {
        var socket = new Socket(endPoint.AddressFamily, SocketType.Stream, protocol);
        try
        {
            await BlockingSocketCalls.ConnectAsync(socket, endPoint, cancellationToken).ConfigureAwait(false);
        }
        catch (SocketException ex)
        {
            socket.Dispose();
            string why = ex.SocketErrorCode switch
            {
                SocketError.ConnectionRefused => "connection refused",
                SocketError.AddressNotAvailable when uri.Scheme == "unix" => "no socket file there",
                _ => ex.Message,
            };
            throw new TransportException($"Cannot connect to {uri}: {why}. Is the destination listening there (migrate-incoming {uri})?", ex);
        }
        catch
        {
            socket.Dispose();
            throw;
        }

        SocketPipeTuning.Configure(socket);
        return SocketMigrationConnection.Create(SocketPipeTuning.Wrap(socket, uri.ToString(), connecting: true), uri.ToString(), new SocketChannelOpener.Dialer(endPoint, protocol));
    }

    public static Socket Listen(EndPoint endPoint, ProtocolType protocol, TransportEndpoint uri, string takenAdvice)
    {
        var socket = new Socket(endPoint.AddressFamily, SocketType.Stream, protocol);
        try
        {
            socket.Bind(endPoint);
            socket.Listen(8);
            return socket;
        }
        catch (SocketException ex)
        {
            socket.Dispose();
            if (ex.SocketErrorCode == SocketError.AddressAlreadyInUse)
            {
                throw new TransportException($"Cannot listen on {uri}: the address is already in use. {takenAdvice}", ex);
            }

            throw new TransportException($"Cannot listen on {uri}: {ex.Message}.", ex);
        }
    }
}
