using System.Text.Json.Nodes;
using Modular.Tests.Support;

namespace Modular.Tests.EndToEnd;

/// <summary>
/// The seed's warning, end to end: the connection is cut during postcopy (a test transport plugin,
/// scheme "cut", connects over TCP and resets the connection after N bytes). Both sides report
/// failed; the destination stops its guest and exits with an error; the source keeps the stopped
/// guest and says it cannot be resumed safely; no process is left behind.
/// </summary>
[TestClass]
public sealed class PostcopyConnectionCutTests
{
    private const string CutTransportSource = """
        using System;
        using System.IO;
        using System.IO.Pipelines;
        using System.Net.Sockets;
        using System.Threading;
        using System.Threading.Tasks;
        using Modular.Abstractions.Plugins;
        using Modular.Abstractions.Transports;

        [TransportMetadata("cut")]
        public sealed class CutTransport : IMigrationTransport
        {
            public PluginAvailability Probe() => PluginAvailability.Usable;

            public async ValueTask<IMigrationConnection> ConnectAsync(TransportEndpoint endpoint, CancellationToken cancellationToken = default)
            {
                long after = long.Parse(Environment.GetEnvironmentVariable("MODULAR_TEST_CUT_AFTER") ?? "1000000");
                int colon = endpoint.Address.LastIndexOf(':');
                var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                await socket.ConnectAsync(endpoint.Address[..colon], int.Parse(endpoint.Address[(colon + 1)..]), cancellationToken);
                return new CutConnection(socket, after);
            }

            public ValueTask<IMigrationListener> ListenAsync(TransportEndpoint endpoint, CancellationToken cancellationToken = default) =>
                throw new TransportException("the cut test transport only connects");
        }

        internal sealed class CutConnection : IMigrationConnection, IDuplexPipe
        {
            private readonly Socket _socket;
            private readonly CancellationTokenSource _closed = new();

            public CutConnection(Socket socket, long after)
            {
                _socket = socket;
                var stream = new CutStream(new NetworkStream(socket, ownsSocket: false), after, this);
                Input = PipeReader.Create(stream);
                Output = PipeWriter.Create(stream);
            }

            public PipeReader Input { get; }
            public PipeWriter Output { get; }
            public IDuplexPipe Transport => this;
            public CancellationToken Closed => _closed.Token;
            public string RemoteDescription => "cut test connection";

            public void Abort(Exception? reason = null) => Cut();

            public void Cut()
            {
                try { _socket.LingerState = new LingerOption(true, 0); } catch (Exception) { }
                _socket.Close();
                _closed.Cancel();
            }

            public ValueTask DisposeAsync()
            {
                Cut();
                return ValueTask.CompletedTask;
            }
        }

        internal sealed class CutStream : Stream
        {
            private readonly Stream _inner;
            private readonly CutConnection _owner;
            private long _left;

            public CutStream(Stream inner, long after, CutConnection owner) { _inner = inner; _left = after; _owner = owner; }

            public override bool CanRead => true;
            public override bool CanSeek => false;
            public override bool CanWrite => true;
            public override long Length => throw new NotSupportedException();
            public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
            public override void Flush() => _inner.Flush();
            public override int Read(byte[] buffer, int offset, int count) => _inner.Read(buffer, offset, count);
            public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) => _inner.ReadAsync(buffer, cancellationToken);
            public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
            public override void SetLength(long value) => throw new NotSupportedException();
            public override void Write(byte[] buffer, int offset, int count) => WriteAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();

            public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
            {
                if (_left <= 0)
                {
                    throw new IOException("the cut test transport cut the connection");
                }

                int now = (int)Math.Min(buffer.Length, _left);
                await _inner.WriteAsync(buffer[..now], cancellationToken);
                _left -= now;
                if (_left <= 0)
                {
                    await Task.Delay(100);
                    _owner.Cut();
                    throw new IOException("the cut test transport cut the connection");
                }
            }
        }
        """;

    public TestContext TestContext { get; set; } = null!;

    [TestMethod]
    public async Task ConnectionCutDuringPostcopy_BothSidesFail_DestinationExits_SourceKeepsStoppedGuest()
    {
        string plugins = TestPluginCompiler.TempDirectory("cut-plugin");
        TestPluginCompiler.Compile(Path.Combine(plugins, "cut"), "Modular.Tests.CutTransport", CutTransportSource);

        // 100 MiB: well past the package (postcopy starts at once) and well before the 256 MiB of RAM.
        await using PostcopyPair pair = await PostcopyPair.StartAsync(
            "tcp:127.0.0.1:0",
            sourceEnvironment: new Dictionary<string, string> { ["MODULAR_TEST_CUT_AFTER"] = (100L << 20).ToString(System.Globalization.CultureInfo.InvariantCulture) },
            extraArgs: ["--plugins", plugins]);
        await pair.SetCapabilitiesAsync("events", "postcopy-ram");
        await PostcopyEndToEndTests.WaitForSerialAsync(pair.SourceSerial, 'A', TimeSpan.FromSeconds(30));
        string uri = "cut:" + pair.IncomingUri["tcp:".Length..];
        await pair.SourceQmp.ExecuteAsync("migrate", new JsonObject { ["uri"] = uri });
        await pair.SourceQmp.ExecuteAsync("migrate-start-postcopy");

        JsonObject source = await PostcopyPair.WaitForAsync(pair.SourceQmp, r => PostcopyPair.Status(r) is "completed" or "failed", TimeSpan.FromSeconds(60), "the source to fail");
        TestContext.WriteLine("source: " + source.ToJsonString());
        Assert.AreEqual("failed", PostcopyPair.Status(source), source.ToJsonString());
        string error = source["error-desc"]!.ToString();
        StringAssert.Contains(error, "Postcopy migration to cut:");
        StringAssert.Contains(error, "The guest cannot be resumed safely on this host");

        // The source keeps the guest, stopped.
        string sourceState = (await pair.SourceQmp.ExecuteAsync("query-status"))!["status"]!.ToString();
        Assert.AreNotEqual("running", sourceState);

        // The destination gives up the guest and exits with an error.
        int exit = PostcopyPair.WaitForExit(pair.Destination, TimeSpan.FromSeconds(30), "the destination");
        TestContext.WriteLine("destination stderr: " + pair.DestinationStderr);
        Assert.AreEqual(1, exit, pair.DestinationStderr);
        StringAssert.Contains(pair.DestinationStderr, "modular: Incoming migration failed:");
        Assert.IsTrue(pair.Source.HasExited == false, "the source keeps running (with the stopped guest) until told to quit");
    }
}
