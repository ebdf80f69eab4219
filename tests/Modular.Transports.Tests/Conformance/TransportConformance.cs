using Modular.Abstractions.Transports;
using Modular.Conformance.Transports;
using Modular.Transports.Files;
using Modular.Transports.Tcp;
using Modular.Transports.Unix;

namespace Modular.Transports.Tests.Conformance;

/// <summary>The conformance kit against the shipped tcp transport.</summary>
[TestClass]
public sealed class TcpConformanceTests : TransportConformanceTests
{
    protected override IMigrationTransport Transport { get; } = new TcpTransport();

    protected override TransportEndpoint ListenEndpoint() => TransportEndpoint.Parse("tcp:127.0.0.1:0");
}

/// <summary>The conformance kit against the shipped unix transport.</summary>
[TestClass]
public sealed class UnixConformanceTests : TransportConformanceTests
{
    private readonly string _dir = Directory.CreateTempSubdirectory("modular-unix-kit-").FullName;
    private int _next;

    protected override IMigrationTransport Transport { get; } = new UnixTransport();

    protected override TransportEndpoint ListenEndpoint() => new("unix", Path.Combine(_dir, $"kit{_next++}.sock"));

    protected override string PeerSeesAbortAsEndReason =>
        "a unix stream socket has no reset: the peer of an aborted connection sees the stream end early, which the engine's stream reader reports as a truncated stream";

    [TestCleanup]
    public void Cleanup() => Directory.Delete(_dir, recursive: true);
}

/// <summary>The conformance kit against the shipped file transport: store-and-forward, one reader per accept.</summary>
[TestClass]
public sealed class FileConformanceTests : TransportConformanceTests
{
    private readonly string _dir = Directory.CreateTempSubdirectory("modular-file-kit-").FullName;
    private int _next;

    protected override IMigrationTransport Transport { get; } = new FileTransport();

    protected override TransportEndpoint ListenEndpoint() => new("file", Path.Combine(_dir, $"kit{_next++}.state"));

    /// <summary>Connecting creates the file, so "nobody listens" is a path whose directory does not exist.</summary>
    protected override Task<TransportEndpoint> UnusedEndpointAsync() =>
        Task.FromResult(new TransportEndpoint("file", Path.Combine(_dir, "no-such-dir", "vm.state")));

    protected override string StoreAndForwardReason =>
        "file: the source writes the whole stream and closes the file; the destination reads it afterwards, and the return path is empty";

    protected override string EndpointCannotBeTakenReason => "file: any number of readers may open one migration file";

    [TestCleanup]
    public void Cleanup() => Directory.Delete(_dir, recursive: true);
}
