using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;
using Modular.Abstractions.Memory;
using Modular.Core.Qmp;

namespace Modular.Tests.Qmp;

/// <summary>A short temporary directory for sockets (unix socket paths are limited to 107 bytes).</summary>
internal sealed class TempSocketDirectory : IDisposable
{
    public TempSocketDirectory() => Path = Directory.CreateTempSubdirectory("mqmp").FullName;

    public string Path { get; }

    public string SocketPath(string name = "qmp.sock") => System.IO.Path.Combine(Path, name);

    public void Dispose() => Directory.Delete(Path, recursive: true);
}

/// <summary>A raw QMP connection: exact bytes in, exact lines out, for checking the wire format.</summary>
internal sealed class RawQmpConnection : IAsyncDisposable
{
    private static readonly TimeSpan ReadTimeout = TimeSpan.FromSeconds(10);
    private readonly Socket _socket;
    private readonly NetworkStream _stream;
    private readonly StreamReader _reader;

    private RawQmpConnection(Socket socket)
    {
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: true);
        _reader = new StreamReader(_stream, Encoding.ASCII);
    }

    public static async Task<RawQmpConnection> ConnectAsync(string path)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await socket.ConnectAsync(new UnixDomainSocketEndPoint(path));
        return new RawQmpConnection(socket);
    }

    /// <summary>Connects, skips the greeting and negotiates.</summary>
    public static async Task<RawQmpConnection> ConnectNegotiatedAsync(string path)
    {
        RawQmpConnection connection = await ConnectAsync(path);
        await connection.ReadLineAsync();
        Assert.AreEqual("{\"return\": {}}", await connection.RoundTripAsync("{\"execute\": \"qmp_capabilities\"}\n"));
        return connection;
    }

    public async Task SendAsync(string text) => await _stream.WriteAsync(Encoding.UTF8.GetBytes(text));

    public async Task SendBytesAsync(byte[] bytes) => await _stream.WriteAsync(bytes);

    /// <summary>The next line without its CRLF (which is checked), or null at end of stream.</summary>
    public async Task<string?> ReadLineAsync()
    {
        using var timeout = new CancellationTokenSource(ReadTimeout);
        var line = new StringBuilder();
        char[] one = new char[1];
        while (true)
        {
            int read = await _reader.ReadAsync(one.AsMemory(), timeout.Token);
            if (read == 0)
            {
                return line.Length == 0 ? null : throw new AssertFailedException($"Stream ended inside a line: {line}");
            }

            if (one[0] == '\n')
            {
                string text = line.ToString();
                Assert.EndsWith("\r", text, $"QMP lines end with CRLF: {text}");
                return text[..^1];
            }

            line.Append(one[0]);
        }
    }

    public async Task<string> RoundTripAsync(string request)
    {
        await SendAsync(request);
        return await ReadLineAsync() ?? throw new AssertFailedException($"The server closed the connection after: {request}");
    }

    public async Task<JsonObject> RoundTripJsonAsync(string request) => JsonNode.Parse(await RoundTripAsync(request))!.AsObject();

    public async ValueTask DisposeAsync()
    {
        _reader.Dispose();
        await _stream.DisposeAsync();
        _socket.Dispose();
    }
}

/// <summary>Guest RAM as a byte array: a test double for <see cref="IGuestMemory"/>.</summary>
internal sealed class ByteArrayGuestMemory(int size) : IGuestMemory
{
    public byte[] Bytes { get; } = new byte[size];

    public ulong Size => (ulong)Bytes.Length;

    public int PageSize => 4096;

    public int ReadCalls { get; private set; }

    public void Read(GuestPhysicalAddress address, Span<byte> destination)
    {
        if (!Contains(address, (ulong)destination.Length))
        {
            throw new ArgumentOutOfRangeException(nameof(address), $"{address}+{destination.Length} is outside guest RAM");
        }

        ReadCalls++;
        Bytes.AsSpan((int)address.Value, destination.Length).CopyTo(destination);
    }

    public void Write(GuestPhysicalAddress address, ReadOnlySpan<byte> source)
    {
        if (!Contains(address, (ulong)source.Length))
        {
            throw new ArgumentOutOfRangeException(nameof(address), $"{address}+{source.Length} is outside guest RAM");
        }

        source.CopyTo(Bytes.AsSpan((int)address.Value));
    }

    public bool Contains(GuestPhysicalAddress address, ulong length) =>
        address.Value <= Size && length <= Size - address.Value;
}

/// <summary>A machine double that records calls and emits events the way the real machine must.</summary>
internal sealed class FakeQmpMachine(QmpServer server, IGuestMemory memory) : IQmpMachine
{
    public QmpRunState RunState { get; set; } = QmpRunState.Running;

    public IGuestMemory Memory => memory;

    public List<string> Calls { get; } = [];

    public void Stop()
    {
        Calls.Add("stop");
        if (RunState == QmpRunState.Running)
        {
            RunState = QmpRunState.Paused;
            server.EmitEvent("STOP");
        }
    }

    public void Resume()
    {
        Calls.Add("resume");
        if (RunState != QmpRunState.Running)
        {
            RunState = QmpRunState.Running;
            server.EmitEvent("RESUME");
        }
    }

    public void Quit()
    {
        Calls.Add("quit");
        // As the real machine: the shutdown happens later on another thread, after the reply.
        _ = Task.Run(() => server.EmitEvent("SHUTDOWN", new JsonObject { ["guest"] = false, ["reason"] = "host-qmp-quit" }));
    }
}
