using System.IO.Pipelines;
using Modular.Abstractions.Transports;

namespace Example.Tcpz.Tests;

/// <summary>What tcpz adds over tcp: compressible stream data takes less on the wire, and arrives the same.</summary>
[TestClass]
public sealed class CompressionTests
{
    [TestMethod]
    public async Task CompressiblePagesTakeLessThanATenthOnTheWire()
    {
        var transport = new TcpzTransport();
        await using IMigrationListener listener = await transport.ListenAsync(TransportEndpoint.Parse("tcpz:127.0.0.1:0"));
        Task<IMigrationConnection> accepting = listener.AcceptAsync().AsTask();
        await using IMigrationConnection source = await transport.ConnectAsync(listener.Endpoint);
        await using IMigrationConnection destination = await accepting;

        // 4 MiB of "guest pages": mostly zeros with a counter in each page, as a freshly booted guest's RAM is.
        byte[] page = new byte[4096];
        Task<byte[]> receiving = ReadAllAsync(destination.Transport.Input);
        for (int i = 0; i < 1024; i++)
        {
            BitConverter.TryWriteBytes(page, i);
            await source.Transport.Output.WriteAsync(page);
        }

        await source.Transport.Output.CompleteAsync();
        byte[] received = await receiving.WaitAsync(TimeSpan.FromSeconds(30));

        Assert.AreEqual(4 << 20, received.Length);
        Assert.AreEqual(1023, BitConverter.ToInt32(received, 1023 * 4096));
        var connection = (TcpzConnection)source;
        Assert.AreEqual(4L << 20, connection.RawBytesSent);
        Assert.IsLessThan(connection.RawBytesSent / 10, connection.WireBytesSent, $"{connection.WireBytesSent} bytes on the wire for 4 MiB of mostly-zero pages");
    }

    [TestMethod]
    public void MalformedEndpointSaysWhatIsExpected()
    {
        var ex = Assert.ThrowsExactly<TransportException>(() => TcpzTransport.Parse(TransportEndpoint.Parse("tcpz:somewhere")));
        Assert.AreEqual("'tcpz:somewhere' is not a valid tcpz endpoint: tcpz:HOST:PORT expected, with an IP address, for example tcpz:127.0.0.1:4444.", ex.Message);
    }

    private static async Task<byte[]> ReadAllAsync(PipeReader input)
    {
        using var all = new MemoryStream();
        while (true)
        {
            ReadResult result = await input.ReadAsync();
            foreach (ReadOnlyMemory<byte> segment in result.Buffer)
            {
                all.Write(segment.Span);
            }

            input.AdvanceTo(result.Buffer.End);
            if (result.IsCompleted)
            {
                return all.ToArray();
            }
        }
    }
}
