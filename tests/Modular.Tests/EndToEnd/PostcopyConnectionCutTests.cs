using System.Text.Json.Nodes;
using Modular.Core.Qmp;
using Modular.Core.Verification;
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

    /// <summary>The pair, with the cut transport compiled into a plugin folder both processes load; the source's connections are cut after <paramref name="cutAfter"/> bytes each.</summary>
    private static Task<PostcopyPair> StartCutPairAsync(long cutAfter, IReadOnlyList<string>? extraArgs = null)
    {
        string plugins = TestPluginCompiler.TempDirectory("cut-plugin");
        TestPluginCompiler.Compile(Path.Combine(plugins, "cut"), "Modular.Tests.CutTransport", CutTransportSource);
        return PostcopyPair.StartAsync(
            "tcp:127.0.0.1:0",
            sourceEnvironment: new Dictionary<string, string> { ["MODULAR_TEST_CUT_AFTER"] = cutAfter.ToString(System.Globalization.CultureInfo.InvariantCulture) },
            extraArgs: ["--plugins", plugins, .. extraArgs ?? []]);
    }

    [TestMethod]
    public async Task ConnectionCutDuringPostcopy_BothSidesFail_DestinationExits_SourceKeepsStoppedGuest()
    {
        // 100 MiB: well past the package (postcopy starts at once) and well before the 256 MiB of RAM.
        await using PostcopyPair pair = await StartCutPairAsync(100L << 20);
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

    /// <summary>
    /// Postcopy recovery (QEMU's postcopy-paused, migrate-recover, migrate with resume=true), with
    /// x-modular-postcopy-recovery on both sides: the same cut pauses both sides instead of failing
    /// them; the destination keeps its guest and listens again; the source connects over plain tcp,
    /// sends what the destination's received bitmaps lack, and the migration completes with the
    /// guest's RAM intact.
    /// </summary>
    [TestMethod]
    public Task ConnectionCutDuringPostcopy_WithRecovery_BothPause_ThenResumeCompletes() => RecoverAfterCutAsync([], cutTwice: true);

    /// <summary>
    /// The same on 2 MiB huge pages: the cut falls inside a host page the destination was assembling;
    /// that page is dropped, and the source sends it whole again after the recovery.
    /// </summary>
    [TestMethod]
    public async Task ConnectionCutInsideAHugePage_WithRecovery_ResumeCompletes()
    {
        using HugePageReservation reservation = HugePageReservation.Reserve((2 * 128) + 8);
        await RecoverAfterCutAsync(["--set", "machine.hugepages=true"]);
    }

    /// <summary>
    /// The operator's CLI meets the pause: <c>modular migrate --postcopy --postcopy-recovery</c> stops
    /// at postcopy-paused instead of waiting forever, says why and what to run next, and exits 1; the
    /// recovery then goes on with the printed commands.
    /// </summary>
    [TestMethod]
    public async Task CliMigrate_StopsAtThePause_AndSaysWhatToRunNext()
    {
        await using PostcopyPair pair = await StartCutPairAsync(100L << 20);
        await pair.DestinationQmp.ExecuteAsync("migrate-set-capabilities", JsonNode.Parse("""{ "capabilities": [ { "capability": "postcopy-ram", "state": true }, { "capability": "x-modular-postcopy-recovery", "state": true } ] }""")!.AsObject());
        await PostcopyEndToEndTests.WaitForSerialAsync(pair.SourceSerial, 'A', TimeSpan.FromSeconds(30));
        string sourceSocket = Path.Combine(pair.Directory, "src.sock");

        CliProcess.Result paused = await Task.Run(() => CliProcess.Run(TimeSpan.FromMinutes(2), "migrate", "--qmp", sourceSocket, "--postcopy", "--postcopy-recovery", "cut:" + pair.IncomingUri["tcp:".Length..]));

        TestContext.WriteLine(paused.StdOut + paused.StdErr);
        Assert.AreEqual(1, paused.ExitCode, "a paused migration is not a completed one: " + paused.StdOut + paused.StdErr);
        StringAssert.Contains(paused.StdOut, "status:       postcopy-paused");
        StringAssert.Contains(paused.StdOut, "paused:       the cut test transport cut the connection.");
        StringAssert.Contains(paused.StdOut, "next:         on the destination, modular migrate-recover --qmp SOCKET URI; then here, modular migrate --qmp SOCKET --resume URI");

        string recoverUri = $"tcp:127.0.0.1:{PostcopyPair.FreeTcpPort()}";
        CliProcess.Result recover = await Task.Run(() => CliProcess.Run(TimeSpan.FromMinutes(1), "migrate-recover", "--qmp", Path.Combine(pair.Directory, "dst.sock"), recoverUri));
        Assert.AreEqual(0, recover.ExitCode, recover.StdOut + recover.StdErr);
        CliProcess.Result resumed = await Task.Run(() => CliProcess.Run(TimeSpan.FromMinutes(2), "migrate", "--qmp", sourceSocket, "--resume", recoverUri));
        Assert.AreEqual(0, resumed.ExitCode, resumed.StdOut + resumed.StdErr);
        StringAssert.Contains(resumed.StdOut, "status:       completed");
        AbRamCheckResult check = await pair.CheckDestinationRamAsync(PostcopyEndToEndTests.Memory);
        Assert.IsTrue(check.Passed, check.Message);
    }

    /// <param name="extraArgs">Extra arguments for both processes.</param>
    /// <param name="cutTwice">Resume once over the cut transport too, which cuts the recovered connection as well: both sides pause again, and a second recovery completes.</param>
    private async Task RecoverAfterCutAsync(string[] extraArgs, bool cutTwice = false)
    {
        // 101 MiB and a bit: well past the package, and inside a host page's records.
        await using PostcopyPair pair = await StartCutPairAsync((101L << 20) + 12345, extraArgs);
        await pair.SetCapabilitiesAsync("events", "postcopy-ram", "x-modular-postcopy-recovery");
        await PostcopyEndToEndTests.WaitForSerialAsync(pair.SourceSerial, 'A', TimeSpan.FromSeconds(30));

        // Nothing to resume yet: QEMU's refusals.
        QmpErrorException notPaused = await Assert.ThrowsExactlyAsync<QmpErrorException>(() => pair.SourceQmp.ExecuteAsync("migrate", new JsonObject { ["uri"] = "tcp:127.0.0.1:1", ["resume"] = true }));
        StringAssert.Contains(notPaused.Message, "Cannot resume if there is no paused migration");
        QmpErrorException notPausedHere = await Assert.ThrowsExactlyAsync<QmpErrorException>(() => pair.DestinationQmp.ExecuteAsync("migrate-recover", new JsonObject { ["uri"] = "tcp:127.0.0.1:0" }));
        StringAssert.Contains(notPausedHere.Message, "Migrate recover can only be run when postcopy is paused");

        string uri = "cut:" + pair.IncomingUri["tcp:".Length..];
        await pair.SourceQmp.ExecuteAsync("migrate", new JsonObject { ["uri"] = uri });
        await pair.SourceQmp.ExecuteAsync("migrate-start-postcopy");

        JsonObject source = await PostcopyPair.WaitForAsync(pair.SourceQmp, r => PostcopyPair.Status(r) is "postcopy-paused" or "completed" or "failed", TimeSpan.FromSeconds(60), "the source to pause");
        Assert.AreEqual("postcopy-paused", PostcopyPair.Status(source), source.ToJsonString());
        JsonObject destination = await PostcopyPair.WaitForAsync(pair.DestinationQmp, r => PostcopyPair.Status(r) is "postcopy-paused" or "completed" or "failed", TimeSpan.FromSeconds(30), "the destination to pause");
        Assert.AreEqual("postcopy-paused", PostcopyPair.Status(destination), destination.ToJsonString());
        Assert.IsFalse(pair.Destination.HasExited, "a paused destination keeps its guest: " + pair.DestinationStderr);
        Assert.AreEqual("running", (await pair.DestinationQmp.ExecuteAsync("query-status"))!["status"]!.ToString(), "the destination's guest runs on with the pages it has");
        await pair.SourceQmp.WaitForEventAsync(e => e.Name == "MIGRATION" && e.Data?["status"]?.ToString() == "postcopy-paused", "MIGRATION postcopy-paused", TimeSpan.FromSeconds(5));

        // A resume to where nobody listens fails and pauses again, saying why.
        string nobody = $"tcp:127.0.0.1:{PostcopyPair.FreeTcpPort()}";
        await pair.SourceQmp.ExecuteAsync("migrate", new JsonObject { ["uri"] = nobody, ["resume"] = true });
        source = await PostcopyPair.WaitForAsync(pair.SourceQmp, r => r["x-modular-postcopy-pause-reason"]?.ToString().Contains(nobody, StringComparison.Ordinal) == true, TimeSpan.FromSeconds(30), "the source to pause again after a failed resume");
        Assert.AreEqual("postcopy-paused", PostcopyPair.Status(source), source.ToJsonString());
        Assert.AreEqual(0L, source["x-modular-postcopy-recoveries"]!.GetValue<long>(), source.ToJsonString());

        int expectedRecoveries = 1;
        if (cutTwice)
        {
            // The recovered connection fails too (the cut transport again, after as many bytes): both
            // sides pause again after one recovery, and the received bitmaps are exchanged a second time.
            int first = PostcopyPair.FreeTcpPort();
            await pair.DestinationQmp.ExecuteAsync("migrate-recover", new JsonObject { ["uri"] = $"tcp:127.0.0.1:{first}" });
            await pair.SourceQmp.ExecuteAsync("migrate", new JsonObject { ["uri"] = $"cut:127.0.0.1:{first}", ["resume"] = true });
            source = await PostcopyPair.WaitForAsync(pair.SourceQmp, r => r["x-modular-postcopy-recoveries"]?.GetValue<long>() == 1 && PostcopyPair.Status(r) is "postcopy-paused" || PostcopyPair.Status(r) is "completed" or "failed", TimeSpan.FromSeconds(60), "the source to pause a second time");
            Assert.AreEqual("postcopy-paused", PostcopyPair.Status(source), source.ToJsonString() + pair.SourceStderr);
            destination = await PostcopyPair.WaitForAsync(pair.DestinationQmp, r => r["x-modular-postcopy-recoveries"]?.GetValue<long>() == 1 && PostcopyPair.Status(r) is "postcopy-paused" || PostcopyPair.Status(r) is "completed" or "failed", TimeSpan.FromSeconds(30), "the destination to pause a second time");
            Assert.AreEqual("postcopy-paused", PostcopyPair.Status(destination), destination.ToJsonString() + pair.DestinationStderr);
            expectedRecoveries = 2;
        }

        // The destination listens again; the source resumes there over plain tcp.
        int port = PostcopyPair.FreeTcpPort();
        string recoverUri = $"tcp:127.0.0.1:{port}";
        await pair.DestinationQmp.ExecuteAsync("migrate-recover", new JsonObject { ["uri"] = recoverUri });
        QmpErrorException twice = await Assert.ThrowsExactlyAsync<QmpErrorException>(() => pair.DestinationQmp.ExecuteAsync("migrate-recover", new JsonObject { ["uri"] = "tcp:127.0.0.1:0" }));
        StringAssert.Contains(twice.Message, "Migrate recovery is triggered already");
        await pair.SourceQmp.ExecuteAsync("migrate", new JsonObject { ["uri"] = recoverUri, ["resume"] = true });

        source = await PostcopyPair.WaitForAsync(pair.SourceQmp, r => PostcopyPair.Status(r) is "completed" or "failed" or "postcopy-paused", TimeSpan.FromSeconds(90), "the source to complete after the recovery");
        TestContext.WriteLine("source: " + source.ToJsonString());
        Assert.AreEqual("completed", PostcopyPair.Status(source), source.ToJsonString() + pair.SourceStderr);
        destination = await PostcopyPair.WaitForAsync(pair.DestinationQmp, r => PostcopyPair.Status(r) is "completed" or "failed", TimeSpan.FromSeconds(30), "the destination to complete");
        Assert.AreEqual("completed", PostcopyPair.Status(destination), destination.ToJsonString() + pair.DestinationStderr);
        Assert.AreEqual(expectedRecoveries, source["x-modular-postcopy-recoveries"]!.GetValue<long>(), source.ToJsonString());
        Assert.AreEqual(expectedRecoveries, destination["x-modular-postcopy-recoveries"]!.GetValue<long>(), destination.ToJsonString());
        await pair.SourceQmp.WaitForEventAsync(e => e.Name == "MIGRATION" && e.Data?["status"]?.ToString() == "postcopy-recover", "MIGRATION postcopy-recover", TimeSpan.FromSeconds(5));

        // The guest keeps printing on the destination, and its RAM is whole.
        long before = new FileInfo(pair.DestinationSerial).Length;
        await PostcopyEndToEndTests.WaitForSerialGrowthAsync(pair.DestinationSerial, before, TimeSpan.FromSeconds(30));
        AbRamCheckResult check = await pair.CheckDestinationRamAsync(PostcopyEndToEndTests.Memory);
        Assert.IsTrue(check.Passed, check.Message);
        TestContext.WriteLine("source stderr: " + pair.SourceStderr);
        TestContext.WriteLine("destination stderr: " + pair.DestinationStderr);
    }

}
