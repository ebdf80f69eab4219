using System.Collections.Concurrent;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Modular.Core.Interop;

namespace Modular.Core.Qmp;

/// <summary>
/// An asynchronous QMP client over a unix socket, for the CLI and tests; it also talks to QEMU.
/// <see cref="ConnectAsync"/> reads the greeting and negotiates. Commands carry increasing numeric
/// ids and may be issued from several threads; replies are matched by id, and events that arrive in
/// between go to an inbox read with <see cref="WaitForEventAsync(string, TimeSpan, CancellationToken)"/>.
/// </summary>
public sealed class QmpClient : IAsyncDisposable
{
    private readonly Socket _socket;
    private readonly NetworkStream _stream;
    private readonly StreamReader _reader;
    private readonly SemaphoreSlim _writeLock = new(1, 1);
    private readonly ConcurrentDictionary<long, Pending> _pending = new();
    private readonly QmpEventInbox _events = new();
    private readonly CancellationTokenSource _closed = new();
    private Task _readLoop = Task.CompletedTask;
    private long _nextId;

    private QmpClient(string socketPath, Socket socket)
    {
        SocketPath = socketPath;
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: false);
        _reader = new StreamReader(_stream, new UTF8Encoding(false));
    }

    /// <summary>The socket path this client is connected to.</summary>
    public string SocketPath { get; }

    /// <summary>The greeting's <c>QMP</c> member: <c>{"version": {...}, "capabilities": [...]}</c>.</summary>
    public JsonObject Greeting { get; private set; } = new();

    /// <summary>Cancelled when the connection ends (server closed it, or this client was disposed).</summary>
    public CancellationToken Closed => _closed.Token;

    /// <summary>
    /// What a failed connect means for a QMP path: .NET reports a missing socket file as "Cannot
    /// assign requested address" (ENOENT maps to AddressNotAvailable), which names the wrong thing.
    /// </summary>
    private static string WhyNotConnected(string socketPath, SocketException e)
    {
        FileKind kind;
        try
        {
            kind = FileStatusInterop.GetKind(socketPath, out _);
        }
        catch (IOException)
        {
            return e.Message;
        }

        return kind switch
        {
            FileKind.Missing => "there is no such file",
            FileKind.Other => "the file there is not a socket",
            _ => e.SocketErrorCode switch
            {
                SocketError.ConnectionRefused => "nothing listens on it (a socket file left behind by a VM that has ended?)",
                SocketError.AccessDenied => "permission denied (run as a user who may open it)",
                _ => e.Message,
            },
        };
    }

    /// <summary>Connects, reads the greeting and runs <c>qmp_capabilities</c>.</summary>
    /// <param name="socketPath">The server's unix socket.</param>
    /// <param name="cancellationToken">Cancels connecting and the handshake.</param>
    /// <exception cref="QmpConnectionException">Nothing listens there, or the peer does not speak QMP.</exception>
    public static async Task<QmpClient> ConnectAsync(string socketPath, CancellationToken cancellationToken = default)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), cancellationToken).ConfigureAwait(false);
        }
        catch (SocketException e)
        {
            socket.Dispose();
            throw new QmpConnectionException(socketPath,
                $"Cannot connect to the QMP socket '{socketPath}': {WhyNotConnected(socketPath, e)}. Is the VM running with this QMP path?", e);
        }

        var client = new QmpClient(socketPath, socket);
        try
        {
            string? line = await client._reader.ReadLineAsync(cancellationToken).ConfigureAwait(false);
            JsonObject? greeting = line is null ? null : ParseMessage(line)?["QMP"] as JsonObject;
            client.Greeting = greeting ?? throw new QmpConnectionException(socketPath,
                $"The peer on '{socketPath}' sent no QMP greeting (got: {line ?? "end of stream"}); it is not a QMP server.");
            client._readLoop = Task.Run(client.ReadLoopAsync, CancellationToken.None);
            await client.ExecuteAsync("qmp_capabilities", null, cancellationToken).ConfigureAwait(false);
            return client;
        }
        catch
        {
            await client.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>Runs a command and returns its <c>return</c> value (<c>{}</c> for commands that return nothing).</summary>
    /// <param name="command">The command name.</param>
    /// <param name="arguments">The <c>arguments</c> object, or null for none. It is serialised at once and may be reused.</param>
    /// <param name="cancellationToken">Stops waiting for the reply (the command may still run on the server).</param>
    /// <exception cref="QmpErrorException">The server answered with an error.</exception>
    /// <exception cref="QmpConnectionException">The connection ended before the reply.</exception>
    public async Task<JsonNode?> ExecuteAsync(string command, JsonObject? arguments = null, CancellationToken cancellationToken = default)
    {
        long id = Interlocked.Increment(ref _nextId);
        var pending = new Pending(command, new TaskCompletionSource<JsonObject>(TaskCreationOptions.RunContinuationsAsynchronously));
        _pending[id] = pending;
        try
        {
            // The read loop cancels Closed before failing what is pending, so checking after the
            // registration cannot miss the end of the connection.
            if (_closed.IsCancellationRequested)
            {
                throw new QmpConnectionException(SocketPath, $"The QMP connection to '{SocketPath}' is closed; cannot run '{command}'.");
            }

            var request = new JsonObject { ["execute"] = command };
            if (arguments is not null)
            {
                request["arguments"] = arguments.DeepClone();
            }

            request["id"] = id;
            await SendAsync(QmpJsonWriter.ToText(request) + "\n", cancellationToken).ConfigureAwait(false);
            JsonObject reply = await pending.Reply.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
            if (reply["error"] is JsonObject error)
            {
                throw new QmpErrorException(command, error["class"]?.ToString() ?? "", error["desc"]?.ToString() ?? "");
            }

            return reply["return"];
        }
        finally
        {
            _pending.TryRemove(id, out _);
        }
    }

    /// <summary>Waits for the next event named <paramref name="name"/>; an already received one is returned at once.</summary>
    /// <param name="name">The event name, e.g. <c>STOP</c>.</param>
    /// <param name="timeout">How long to wait.</param>
    /// <param name="cancellationToken">Stops waiting.</param>
    /// <exception cref="TimeoutException">No such event arrived in time.</exception>
    /// <exception cref="QmpConnectionException">The connection ended first.</exception>
    public Task<QmpEvent> WaitForEventAsync(string name, TimeSpan timeout, CancellationToken cancellationToken = default) =>
        WaitForEventAsync(e => e.Name == name, $"event {name}", timeout, cancellationToken);

    /// <summary>Waits for the next event that <paramref name="filter"/> accepts.</summary>
    /// <param name="filter">Chooses the event.</param>
    /// <param name="description">Names what is awaited, for the timeout message.</param>
    /// <param name="timeout">How long to wait.</param>
    /// <param name="cancellationToken">Stops waiting.</param>
    /// <exception cref="TimeoutException">No such event arrived in time.</exception>
    public async Task<QmpEvent> WaitForEventAsync(Func<QmpEvent, bool> filter, string description, TimeSpan timeout, CancellationToken cancellationToken = default)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(timeout);
        try
        {
            return await _events.TakeAsync(filter, deadline.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            throw new TimeoutException($"No QMP {description} arrived on '{SocketPath}' within {timeout.TotalSeconds:0.###} s.");
        }
    }

    /// <summary>Every event in arrival order, as it arrives; ends when the connection ends or on cancellation.</summary>
    /// <param name="cancellationToken">Stops the enumeration.</param>
    public async IAsyncEnumerable<QmpEvent> ReadEventsAsync([EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        while (true)
        {
            QmpEvent next;
            try
            {
                next = await _events.TakeAsync(_ => true, cancellationToken).ConfigureAwait(false);
            }
            catch (QmpConnectionException)
            {
                yield break;
            }

            yield return next;
        }
    }

    /// <summary>Takes every event received and not yet taken, in arrival order.</summary>
    public IReadOnlyList<QmpEvent> TakeReceivedEvents() => _events.TakeAll();

    /// <summary>Closes the connection; pending commands fail with <see cref="QmpConnectionException"/>.</summary>
    public async ValueTask DisposeAsync()
    {
        if (!_closed.IsCancellationRequested)
        {
            try
            {
                _socket.Shutdown(SocketShutdown.Both);
            }
            catch (SocketException)
            {
                // Already gone.
            }
        }

        _socket.Dispose();
        await _readLoop.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        _reader.Dispose();
        _writeLock.Dispose();
    }

    private async Task SendAsync(string text, CancellationToken cancellationToken)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(text);
        await _writeLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            await _stream.WriteAsync(bytes, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException)
        {
            throw new QmpConnectionException(SocketPath, $"The QMP connection to '{SocketPath}' broke while sending: {e.Message}", e);
        }
        finally
        {
            _writeLock.Release();
        }
    }

    /// <summary>Reader thread: routes replies to their callers and events to the inbox.</summary>
    private async Task ReadLoopAsync()
    {
        Exception reason = new QmpConnectionException(SocketPath, $"The QMP server on '{SocketPath}' closed the connection.");
        try
        {
            while (await _reader.ReadLineAsync().ConfigureAwait(false) is { } line)
            {
                if (line.Length == 0 || ParseMessage(line) is not { } message)
                {
                    continue;
                }

                if (message["event"] is JsonValue name && message["timestamp"] is JsonObject timestamp)
                {
                    _events.Add(new QmpEvent(name.ToString(), message["data"]?.DeepClone() as JsonObject,
                        timestamp["seconds"]?.GetValue<long>() ?? -1, timestamp["microseconds"]?.GetValue<long>() ?? -1));
                }
                else if (message.ContainsKey("return") || message.ContainsKey("error"))
                {
                    CompleteReply(message);
                }
            }
        }
        catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException or JsonException or FormatException or InvalidOperationException)
        {
            reason = new QmpConnectionException(SocketPath, $"The QMP connection to '{SocketPath}' broke: {e.Message}", e);
        }
        finally
        {
            _closed.Cancel();
            _events.Close(reason);
            foreach (Pending pending in _pending.Values)
            {
                pending.Reply.TrySetException(reason);
            }
        }
    }

    private void CompleteReply(JsonObject message)
    {
        // A reply without an id (only for input the server could not parse) belongs to the oldest
        // command in flight: without oob, QMP answers in order.
        long id = message["id"] is JsonValue idValue && idValue.TryGetValue(out long parsed)
            ? parsed
            : _pending.Keys.DefaultIfEmpty(-1).Min();
        if (_pending.TryGetValue(id, out Pending? pending))
        {
            pending.Reply.TrySetResult(message);
        }
    }

    private static JsonObject? ParseMessage(string line)
    {
        try
        {
            return JsonNode.Parse(line) as JsonObject;
        }
        catch (JsonException)
        {
            return null;
        }
    }

    private sealed record Pending(string Command, TaskCompletionSource<JsonObject> Reply);
}
