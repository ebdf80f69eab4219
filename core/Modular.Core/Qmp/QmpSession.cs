using System.Net.Sockets;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;

namespace Modular.Core.Qmp;

/// <summary>
/// One connected QMP client: greeting, capabilities negotiation, request checking as QEMU's
/// <c>qmp_dispatch</c> does it, and an outgoing queue shared by replies and events.
/// </summary>
/// <remarks>
/// Two tasks per client. The read loop frames input, checks each request and runs it (through the
/// server, which runs one command at a time across all clients), then queues the reply. The write
/// loop drains the queue onto the socket. Events are queued from any thread by
/// <see cref="TryQueueEvent"/>; because a command's events are queued while it runs and its reply
/// after it returns, a client sees e.g. <c>STOP</c> before the <c>return</c> of <c>stop</c>, as with QEMU.
/// </remarks>
internal sealed class QmpSession
{
    private const string CapabilitiesCommand = "qmp_capabilities";

    private readonly QmpServer _server;
    private readonly Socket _socket;
    private readonly ILogger _logger;
    private readonly CancellationTokenSource _stop;
    private readonly Channel<byte[]> _outgoing = Channel.CreateUnbounded<byte[]>(
        new UnboundedChannelOptions { SingleReader = true, SingleWriter = false });
    private volatile bool _negotiated;

    // Set by a successful qmp_capabilities; _negotiated follows only once its reply is queued, so
    // no event can overtake that reply. Read loop only.
    private bool _pendingNegotiation;

    internal QmpSession(QmpServer server, Socket socket, int id, ILogger logger, CancellationToken serverStopping)
    {
        _server = server;
        _socket = socket;
        _logger = logger;
        Id = id;
        _stop = CancellationTokenSource.CreateLinkedTokenSource(serverStopping);
    }

    /// <summary>A number for log messages.</summary>
    internal int Id { get; }

    /// <summary>
    /// Queues an event if this client has finished negotiation (the spec delivers no events before).
    /// Any thread; never blocks.
    /// </summary>
    /// <param name="wireBytes">The complete event line.</param>
    internal void TryQueueEvent(byte[] wireBytes)
    {
        if (_negotiated)
        {
            _outgoing.Writer.TryWrite(wireBytes);
        }
    }

    /// <summary>
    /// Asks the session to end: the read loop stops taking input (a command already running still
    /// gets its reply queued), then everything queued, e.g. the reply to <c>quit</c> and the
    /// <c>SHUTDOWN</c> event, is written before the socket closes (at most 5 s). Any thread; idempotent.
    /// </summary>
    /// <remarks>
    /// Why the queue is not completed here: <c>quit</c> ends the machine from inside its handler, so
    /// the server is disposed while the handler is still returning:
    /// <code>
    ///   QMP read loop                          main thread (machine exited)
    ///   quit handler: machine.Quit()  -------> QmpServer.DisposeAsync -> Close()
    ///   queue {"return": {}}                   (completing the queue here would drop that reply)
    ///   next receive: cancelled -> complete the queue -> writer drains -> socket closed
    /// </code>
    /// </remarks>
    internal void Close()
    {
        try
        {
            _stop.Cancel();
        }
        catch (ObjectDisposedException)
        {
            // Already finished.
        }
    }

    /// <summary>Runs the session until the client disconnects or <see cref="Close"/> is called.</summary>
    internal async Task RunAsync()
    {
        var greeting = new JsonObject
        {
            ["QMP"] = new JsonObject { ["version"] = _server.Version.ToJson(), ["capabilities"] = new JsonArray() },
        };
        Queue(greeting);
        Task writer = Task.Run(WriteLoopAsync);
        try
        {
            await ReadLoopAsync(_stop.Token).ConfigureAwait(false);
        }
        catch (Exception e) when (e is OperationCanceledException or IOException or SocketException or ObjectDisposedException)
        {
            _logger.LogDebug("QMP client {Id} on {Path} ended: {Reason}", Id, _server.SocketPath, e.Message);
        }
        finally
        {
            _outgoing.Writer.TryComplete();
            // Let the replies already queued reach the client before the socket goes away.
            await writer.WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
            _socket.Dispose();
            _stop.Dispose();
        }
    }

    private async Task ReadLoopAsync(CancellationToken cancellationToken)
    {
        var framer = new QmpInputFramer();
        var inputs = new List<QmpInput>();
        byte[] buffer = new byte[16 * 1024];
        while (true)
        {
            int read = await _socket.ReceiveAsync(buffer, SocketFlags.None, cancellationToken).ConfigureAwait(false);
            if (read == 0)
            {
                return;
            }

            inputs.Clear();
            framer.Feed(buffer.AsSpan(0, read), inputs);
            foreach (QmpInput input in inputs)
            {
                JsonObject reply = input.Error is { } error
                    ? ErrorReply(QmpErrorClass.GenericError, error, id: null)
                    : await HandleAsync(input.Json!, cancellationToken).ConfigureAwait(false);
                Queue(reply);
                if (reply.ContainsKey("return") && _pendingNegotiation)
                {
                    _pendingNegotiation = false;
                    _negotiated = true;
                }
            }
        }
    }

    private async Task<JsonObject> HandleAsync(byte[] json, CancellationToken cancellationToken)
    {
        JsonNode? request;
        try
        {
            request = JsonNode.Parse(json, documentOptions: new JsonDocumentOptions { MaxDepth = QmpInputFramer.MaxNesting + 1 });
            _ = (request as JsonObject)?.Count; // materialise now, so a duplicate key is a parse error
        }
        catch (Exception e) when (e is JsonException or ArgumentException or InvalidOperationException)
        {
            return ErrorReply(QmpErrorClass.GenericError, "JSON parse error, " + DescribeParseError(e), id: null);
        }

        if (request is not JsonObject requestObject)
        {
            return ErrorReply(QmpErrorClass.GenericError, "QMP input must be a JSON object", id: null);
        }

        JsonNode? id = requestObject["id"]?.DeepClone();
        bool hasId = requestObject.ContainsKey("id");
        try
        {
            (string command, JsonObject arguments) = CheckRequest(requestObject);
            JsonNode? result = await RunAsync(command, arguments, cancellationToken).ConfigureAwait(false);
            var reply = new JsonObject { ["return"] = result ?? new JsonObject() };
            if (hasId)
            {
                reply["id"] = id;
            }

            return reply;
        }
        catch (QmpException e)
        {
            return ErrorReply(e.ErrorClass, e.Description, id, hasId);
        }
    }

    /// <summary>QEMU's qmp_dispatch_check_obj: the first offending member, in the order sent, is reported.</summary>
    private static (string Command, JsonObject Arguments) CheckRequest(JsonObject request)
    {
        string? command = null;
        JsonObject? arguments = null;
        foreach ((string key, JsonNode? value) in request)
        {
            switch (key)
            {
                case "execute":
                    // "exec-oob" is only a member when the client enabled the oob capability, which
                    // Modular does not offer, so it falls to the default case exactly as in QEMU.
                    command = value?.GetValueKind() == JsonValueKind.String
                        ? value.GetValue<string>()
                        : throw QmpException.Generic("QMP input member 'execute' must be a string");
                    break;
                case "arguments":
                    arguments = value as JsonObject ?? throw QmpException.Generic("QMP input member 'arguments' must be an object");
                    break;
                case "id":
                    break;
                default:
                    throw QmpException.Generic($"QMP input member '{key}' is unexpected");
            }
        }

        return command is null
            ? throw QmpException.Generic("QMP input lacks member 'execute'")
            : (command, arguments ?? new JsonObject());
    }

    private async ValueTask<JsonNode?> RunAsync(string command, JsonObject arguments, CancellationToken cancellationToken)
    {
        if (!_negotiated)
        {
            if (command != CapabilitiesCommand)
            {
                throw new QmpException(QmpErrorClass.CommandNotFound, "Expecting capabilities negotiation with 'qmp_capabilities'");
            }

            AcceptCapabilities(arguments);
            _pendingNegotiation = true;
            return null;
        }

        if (command == CapabilitiesCommand)
        {
            throw new QmpException(QmpErrorClass.CommandNotFound, "Capabilities negotiation is already complete, command ignored");
        }

        return await _server.ExecuteAsync(command, arguments, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>qmp_capabilities: the only capability QEMU knows is <c>oob</c>, and Modular does not offer it.</summary>
    private static void AcceptCapabilities(JsonObject arguments)
    {
        QmpServer.CheckArgumentNames(arguments, QmpServer.CapabilitiesParameters);
        JsonArray? enable = new QmpArguments(arguments).GetOptionalArray("enable");
        var unavailable = new List<string>();
        for (int i = 0; i < (enable?.Count ?? 0); i++)
        {
            JsonNode? item = enable![i];
            string value = item?.GetValueKind() == JsonValueKind.String
                ? item.GetValue<string>()
                : throw QmpException.Generic($"Invalid parameter type for 'enable[{i}]', expected: string");
            if (value != "oob")
            {
                throw QmpException.Generic($"Parameter 'enable[{i}]' does not accept value '{value}'");
            }

            unavailable.Add(value);
        }

        if (unavailable.Count > 0)
        {
            throw QmpException.Generic($"Capability {string.Join(", ", unavailable)} not available");
        }
    }

    private void Queue(JsonObject message) => _outgoing.Writer.TryWrite(QmpJsonWriter.ToWireBytes(message));

    private async Task WriteLoopAsync()
    {
        try
        {
            await foreach (byte[] line in _outgoing.Reader.ReadAllAsync(CancellationToken.None).ConfigureAwait(false))
            {
                // Not cancelled by Close: what is queued still goes out; RunAsync disposes the
                // socket if the client stops reading for 5 s, which ends this send.
                await _socket.SendAsync(line, SocketFlags.None, CancellationToken.None).ConfigureAwait(false);
            }
        }
        catch (Exception e) when (e is OperationCanceledException or SocketException or ObjectDisposedException)
        {
            _logger.LogDebug("QMP client {Id} on {Path}: write ended: {Reason}", Id, _server.SocketPath, e.Message);
            Close();
        }
    }

    private static JsonObject ErrorReply(string errorClass, string description, JsonNode? id, bool hasId = false)
    {
        var reply = new JsonObject
        {
            ["error"] = new JsonObject { ["class"] = errorClass, ["desc"] = description },
        };
        if (hasId)
        {
            reply["id"] = id;
        }

        return reply;
    }

    /// <summary>Turns System.Text.Json's message into the short phrase QEMU's parser would give.</summary>
    private static string DescribeParseError(Exception e)
    {
        string message = e.Message;
        if (message.Contains("invalid start of a value", StringComparison.Ordinal))
        {
            return "expecting value";
        }

        foreach (string tail in new[] { " Path:", " LineNumber:" })
        {
            int cut = message.IndexOf(tail, StringComparison.Ordinal);
            if (cut > 0)
            {
                message = message[..cut];
            }
        }

        message = message.TrimEnd('.', ' ');
        return message.Length > 0 ? char.ToLowerInvariant(message[0]) + message[1..] : "invalid input";
    }
}
