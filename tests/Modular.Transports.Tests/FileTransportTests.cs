using Modular.Abstractions.Transports;
using Modular.Transports.Files;

namespace Modular.Transports.Tests;

[TestClass]
public sealed class FileTransportTests
{
    private readonly string _dir = Directory.CreateTempSubdirectory("modular-file-").FullName;
    private readonly FileTransport _transport = new();

    [TestCleanup]
    public void Cleanup() => Directory.Delete(_dir, recursive: true);

    [TestMethod]
    public async Task RoundTripThroughAFile()
    {
        var endpoint = new TransportEndpoint("file", Path.Combine(_dir, "vm.state"));
        await File.WriteAllTextAsync(endpoint.Address, new string('x', 100_000)); // truncated by connect
        ulong sent;
        await using (IMigrationConnection source = await _transport.ConnectAsync(endpoint))
        {
            (long back, _) = await TransportTestKit.ReceiveAllAsync(source.Transport.Input).WithTimeout();
            Assert.AreEqual(0, back, "a file has no return path: it reads as empty");
            sent = await TransportTestKit.SendAsync(source.Transport.Output, 3_000_001, complete: false);
        }

        Assert.AreEqual(3_000_001, new FileInfo(endpoint.Address).Length);
        await using IMigrationListener listener = await _transport.ListenAsync(endpoint);
        await using (IMigrationConnection destination = await listener.AcceptAsync())
        {
            Assert.AreEqual((3_000_001L, sent), await TransportTestKit.ReceiveAllAsync(destination.Transport.Input).WithTimeout());
            await TransportTestKit.SendAsync(destination.Transport.Output, 100); // the return path is discarded
        }

        var ex = await Assert.ThrowsExactlyAsync<TransportException>(async () => await listener.AcceptAsync());
        Assert.AreEqual($"{listener.Endpoint} was already accepted once: a file carries one migration. Listen again to read it again.", ex.Message);
    }

    [TestMethod]
    public async Task UnwritablePathNamesFileAndReason()
    {
        string path = Path.Combine(_dir, "no-such-dir", "vm.state");
        var ex = await Assert.ThrowsExactlyAsync<TransportException>(async () => await _transport.ConnectAsync(new TransportEndpoint("file", path)));
        StringAssert.StartsWith(ex.Message, $"Cannot write the migration file '{path}' (file:{path}): Could not find a part of the path");
    }

    [TestMethod]
    public async Task MissingFileCannotBeListenedOn()
    {
        string path = Path.Combine(_dir, "absent.state");
        var ex = await Assert.ThrowsExactlyAsync<TransportException>(async () => await _transport.ListenAsync(new TransportEndpoint("file", path)));
        Assert.AreEqual($"Cannot read the migration file '{path}' (file:{path}): it does not exist.", ex.Message);
    }

    [TestMethod]
    public async Task AbortFailsPendingAndLaterWrites()
    {
        var endpoint = new TransportEndpoint("file", Path.Combine(_dir, "aborted.state"));
        await using IMigrationConnection source = await _transport.ConnectAsync(endpoint);
        source.Abort(new InvalidOperationException("operator cancelled"));
        source.Transport.Output.GetSpan(10);
        source.Transport.Output.Advance(10);
        var ex = await Assert.ThrowsExactlyAsync<TransportException>(async () => await source.Transport.Output.FlushAsync());
        Assert.AreEqual($"The migration connection {endpoint} was aborted: operator cancelled.", ex.Message);
        Assert.IsTrue(source.Closed.IsCancellationRequested);
    }

    [TestMethod]
    public async Task DisposeReleasesFileDescriptors()
    {
        var endpoint = new TransportEndpoint("file", Path.Combine(_dir, "fd.state"));
        int before = TransportTestKit.OpenFileDescriptors();
        for (int i = 0; i < 5; i++)
        {
            await using (IMigrationConnection c = await _transport.ConnectAsync(endpoint))
            {
                await TransportTestKit.SendAsync(c.Transport.Output, 1000, complete: false);
            }

            await using IMigrationListener l = await _transport.ListenAsync(endpoint);
            await using IMigrationConnection d = await l.AcceptAsync();
            await TransportTestKit.ReceiveAllAsync(d.Transport.Input);
        }

        Assert.AreEqual(before, TransportTestKit.OpenFileDescriptors());
    }
}
