using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;

namespace Example.Tcpz.Tests.Support;

/// <summary>A minimal QMP client (JSON lines over a unix socket): enough to drive a migration.</summary>
internal sealed class QmpConnection : IAsyncDisposable
{
    private readonly Socket _socket;
    private readonly StreamReader _reader;
    private readonly StreamWriter _writer;

    private QmpConnection(Socket socket)
    {
        _socket = socket;
        var stream = new NetworkStream(socket, ownsSocket: false);
        _reader = new StreamReader(stream, Encoding.UTF8);
        _writer = new StreamWriter(stream, new UTF8Encoding(false)) { AutoFlush = true, NewLine = "\n" };
    }

    /// <summary>Connects (retrying while the socket appears and <paramref name="gaveUp"/> is false), reads the greeting and negotiates capabilities.</summary>
    public static async Task<QmpConnection> OpenAsync(string path, TimeSpan timeout, Func<bool> gaveUp)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                await socket.ConnectAsync(new UnixDomainSocketEndPoint(path));
                var qmp = new QmpConnection(socket);
                await qmp._reader.ReadLineAsync(); // greeting
                await qmp.ExecuteAsync("qmp_capabilities");
                return qmp;
            }
            catch (SocketException) when (DateTime.UtcNow < deadline && !gaveUp())
            {
                socket.Dispose();
                await Task.Delay(100);
            }
        }
    }

    /// <summary>Runs a command; returns its "return" value, or throws with QMP's error.</summary>
    public async Task<JsonNode?> ExecuteAsync(string command, JsonObject? arguments = null)
    {
        var request = new JsonObject { ["execute"] = command };
        if (arguments is not null)
        {
            request["arguments"] = arguments;
        }

        await _writer.WriteLineAsync(request.ToJsonString());
        while (true)
        {
            string line = await _reader.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(30)) ?? throw new IOException($"QMP closed the connection after '{command}'.");
            JsonNode reply = JsonNode.Parse(line)!;
            if (reply["event"] is not null)
            {
                continue;
            }

            if (reply["error"] is { } error)
            {
                throw new InvalidOperationException($"QMP {command} failed: {error["class"]}: {error["desc"]}");
            }

            return reply["return"];
        }
    }

    public ValueTask DisposeAsync()
    {
        _socket.Dispose();
        return ValueTask.CompletedTask;
    }
}
