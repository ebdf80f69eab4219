using System.Collections.Concurrent;
using System.Net.Sockets;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Modular.Core.Qmp;

/// <summary>
/// A QMP server (QEMU Machine Protocol) on a unix socket, speaking QEMU's JSON shapes so QEMU's
/// tooling can drive Modular. Any number of clients at once; each gets the greeting, must negotiate
/// with <c>qmp_capabilities</c>, and then may run every command in <see cref="Commands"/>.
/// Commands run one at a time across all clients (as in QEMU's main loop).
/// </summary>
/// <remarks>
/// Built-in commands: <c>qmp_capabilities</c>, <c>query-version</c>, <c>query-commands</c>. The
/// machine adds its own (see <see cref="QmpMachineCommands"/>), the migration engine later adds
/// <c>migrate</c> and friends. Events come from whoever changes state, through <see cref="EmitEvent"/>.
/// </remarks>
public sealed class QmpServer : IAsyncDisposable, IDisposable
{
    /// <summary>The arguments <c>qmp_capabilities</c> accepts.</summary>
    internal static readonly string[] CapabilitiesParameters = ["enable"];

    private readonly Socket _listener;
    private readonly ulong _socketInode;
    private readonly ILogger _logger;
    private readonly CancellationTokenSource _stopping = new();
    // Copy-on-write: clients come and go rarely, events are read often. An event's loop over an
    // array needs no generic code; ConcurrentDictionary<int, QmpSession>.Values was compiled
    // (six methods, optimised) at the first event, the destination's RESUME at the end of an
    // incoming migration, inside the downtime the source measures (7-9 ms here).
    private readonly Lock _sessionsGate = new();
    private QmpSession[] _sessions = [];
    private readonly ConcurrentBag<Task> _sessionTasks = [];
    private readonly SemaphoreSlim _commandLock = new(1, 1);
    private readonly Task _acceptLoop;
    private int _nextSessionId;
    private int _disposed;

    private QmpServer(string socketPath, Socket listener, ulong socketInode, QmpVersionInfo version, ILogger logger)
    {
        SocketPath = socketPath;
        _listener = listener;
        _socketInode = socketInode;
        Version = version;
        _logger = logger;
        Commands = new QmpCommandRegistry();
        Commands.Register("qmp_capabilities", CapabilitiesParameters,
            (_, _) => throw new InvalidOperationException("qmp_capabilities is answered by the session, never dispatched."));
        Commands.Register("query-version", (_, _) => ValueTask.FromResult<JsonNode?>(Version.ToJson()));
        Commands.Register("query-commands", (_, _) => ValueTask.FromResult<JsonNode?>(
            new JsonArray(Commands.Names.Select(name => (JsonNode)new JsonObject { ["name"] = name }).ToArray())));
        _acceptLoop = Task.Run(AcceptLoopAsync);

        // The first event's line, built once ahead and thrown away: its JSON code ran cold at the
        // first real event (2.5 ms here), which on a destination is RESUME at the end of an incoming
        // migration, inside the downtime the source measures.
        _ = Task.Run(() => EventLine("x-warm-up", new JsonObject { ["status"] = "none" }));
    }

    /// <summary>The unix socket path the server listens on.</summary>
    public string SocketPath { get; }

    /// <summary>What the greeting and <c>query-version</c> report.</summary>
    public QmpVersionInfo Version { get; }

    /// <summary>The commands this server answers; register more at any time.</summary>
    public QmpCommandRegistry Commands { get; }

    /// <summary>How many clients are connected now (negotiated or not).</summary>
    public int ClientCount => Volatile.Read(ref _sessions).Length;

    /// <summary>
    /// Starts listening on <paramref name="socketPath"/>. The socket file gets mode 0600 before any
    /// client can connect. A stale socket file left by a dead process is removed; a live server on
    /// the path, or a path that is not a socket, is an error.
    /// </summary>
    /// <param name="socketPath">Where to create the unix socket.</param>
    /// <param name="version">What to report as the version; <see cref="QmpVersionInfo.Modular"/> when null.</param>
    /// <param name="logger">Receives client connects, disconnects and handler failures.</param>
    /// <exception cref="QmpServerStartException">The path is in use, not a socket, too long, or cannot be created.</exception>
    public static QmpServer Start(string socketPath, QmpVersionInfo? version = null, ILogger? logger = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(socketPath);
        string fullPath = Path.GetFullPath(socketPath);
        Socket listener = QmpSocketBinding.Listen(fullPath, out ulong inode);
        return new QmpServer(fullPath, listener, inode, version ?? QmpVersionInfo.Modular, logger ?? NullLogger.Instance);
    }

    /// <summary>
    /// Sends <c>{"event": name, "data": data, "timestamp": {"seconds": s, "microseconds": us}}</c> to
    /// every client that has completed negotiation. Any thread; never blocks (each client has its own
    /// outgoing queue). The <paramref name="data"/> object is serialised at once and may be reused.
    /// </summary>
    /// <param name="name">The event name as QEMU spells it (<c>STOP</c>, <c>RESUME</c>, <c>SHUTDOWN</c>, <c>MIGRATION</c>).</param>
    /// <param name="data">The event's data member; omitted when null.</param>
    public void EmitEvent(string name, JsonObject? data = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        byte[] line = EventLine(name, data);
        foreach (QmpSession session in Volatile.Read(ref _sessions))
        {
            session.TryQueueEvent(line);
        }
    }

    private static byte[] EventLine(string name, JsonObject? data)
    {
        long microsecondsSinceEpoch = (DateTime.UtcNow - DateTime.UnixEpoch).Ticks / TimeSpan.TicksPerMicrosecond;
        var message = new JsonObject { ["event"] = name };
        if (data is not null)
        {
            message["data"] = data.DeepClone();
        }

        message["timestamp"] = new JsonObject
        {
            ["seconds"] = microsecondsSinceEpoch / 1_000_000,
            ["microseconds"] = microsecondsSinceEpoch % 1_000_000,
        };
        return QmpJsonWriter.ToWireBytes(message);
    }

    /// <summary>Stops listening, closes every client, waits for their loops, and removes the socket file.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        _stopping.Cancel();
        _listener.Dispose();
        QmpSocketBinding.RemoveIfOurs(SocketPath, _socketInode);
        await _acceptLoop.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        foreach (QmpSession session in Volatile.Read(ref _sessions))
        {
            session.Close();
        }

        await Task.WhenAll(_sessionTasks).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        _stopping.Dispose();
    }

    /// <summary>Same as <see cref="DisposeAsync"/>, blocking.</summary>
    public void Dispose() => DisposeAsync().AsTask().GetAwaiter().GetResult();

    /// <summary>
    /// Runs one negotiated command: looks it up, refuses unknown argument names, runs the handler
    /// under the command lock. Called from a session's read loop.
    /// </summary>
    internal async ValueTask<JsonNode?> ExecuteAsync(string name, JsonObject arguments, CancellationToken cancellationToken)
    {
        if (!Commands.TryGet(name, out QmpCommand command))
        {
            throw new QmpException(QmpErrorClass.CommandNotFound, $"The command {name} has not been found");
        }

        CheckArgumentNames(arguments, command.Parameters);
        await _commandLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            return await command.Handler(new QmpArguments(arguments), cancellationToken).ConfigureAwait(false);
        }
        catch (QmpException)
        {
            throw;
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            throw;
        }
        catch (Exception e)
        {
            _logger.LogError(e, "QMP command {Command} on {Path} failed", name, SocketPath);
            throw new QmpException(QmpErrorClass.GenericError, e.Message, e);
        }
        finally
        {
            _commandLock.Release();
        }
    }

    /// <summary>QEMU's check_struct: the first argument the command does not know is refused.</summary>
    internal static void CheckArgumentNames(JsonObject arguments, IReadOnlyCollection<string> known)
    {
        if (ReferenceEquals(known, QmpCommandRegistry.AnyArguments))
        {
            return; // the command checks them itself
        }

        foreach ((string key, _) in arguments)
        {
            if (!known.Contains(key))
            {
                throw QmpException.Generic($"Parameter '{key}' is unexpected");
            }
        }
    }

    private async Task AcceptLoopAsync()
    {
        while (!_stopping.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await _listener.AcceptAsync(_stopping.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (e is OperationCanceledException or ObjectDisposedException or SocketException)
            {
                if (!_stopping.IsCancellationRequested)
                {
                    _logger.LogError(e, "QMP server on {Path} stopped accepting clients", SocketPath);
                }

                return;
            }

            int id = Interlocked.Increment(ref _nextSessionId);
            var session = new QmpSession(this, client, id, _logger, _stopping.Token);
            lock (_sessionsGate)
            {
                _sessions = [.. _sessions, session];
            }

            _logger.LogInformation("QMP client {Id} connected on {Path}", id, SocketPath);
            _sessionTasks.Add(RunSessionAsync(session));
        }
    }

    private async Task RunSessionAsync(QmpSession session)
    {
        try
        {
            await session.RunAsync().ConfigureAwait(false);
        }
        finally
        {
            lock (_sessionsGate)
            {
                _sessions = Array.FindAll(_sessions, s => s != session);
            }

            _logger.LogInformation("QMP client {Id} disconnected from {Path}", session.Id, SocketPath);
        }
    }
}
