using System.Buffers;
using System.Diagnostics;
using System.IO.Pipelines;
using System.Runtime.InteropServices;
using Modular.Abstractions.Plugins;
using Modular.Abstractions.Transports;

namespace Modular.Transports.Rdma.Tests;

/// <summary>
/// The data path on a real RDMA device (Soft-RoCE or hardware; docs/rdma.md says how to get one).
/// Without a device each test is inconclusive with the probe's reason; none of them passes without
/// moving bytes through a queue pair. MODULAR_RDMA_TEST_ADDRESS picks the IP to listen on and connect
/// to (default 127.0.0.1, which rdma_cm serves over any local device).
/// </summary>
[TestClass]
public sealed class DataPathTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);

    public TestContext TestContext { get; set; } = null!;

    private static string Address => Environment.GetEnvironmentVariable("MODULAR_RDMA_TEST_ADDRESS") ?? "127.0.0.1";

    private static RdmaTransport UsableTransport()
    {
        var transport = new RdmaTransport();
        PluginAvailability availability = transport.Probe();
        if (!availability.IsUsable)
        {
            Assert.Inconclusive("The RDMA data path was not exercised: " + availability.Reason);
        }

        return transport;
    }

    private static async Task<(IMigrationConnection Client, IMigrationConnection Server, IMigrationListener Listener)> ConnectPairAsync(RdmaTransport transport, CancellationToken token)
    {
        IMigrationListener listener = await transport.ListenAsync(TransportEndpoint.Parse($"rdma:{Address}:0"), token);
        ValueTask<IMigrationConnection> accept = listener.AcceptAsync(token);
        IMigrationConnection client = await transport.ConnectAsync(listener.Endpoint, token);
        IMigrationConnection server = await accept;
        return (client, server, listener);
    }

    private static byte Pattern(long index, int seed) => (byte)((index * 131) + (index >> 12) + seed);

    private static async Task WriteAllAsync(PipeWriter writer, long total, int seed, CancellationToken token)
    {
        long written = 0;
        while (written < total)
        {
            int chunk = (int)Math.Min(total - written, 100_003);
            Span<byte> span = writer.GetSpan(chunk)[..chunk];
            for (int i = 0; i < chunk; i++)
            {
                span[i] = Pattern(written + i, seed);
            }

            writer.Advance(chunk);
            written += chunk;
            await writer.FlushAsync(token);
        }

        await writer.CompleteAsync();
    }

    private static async Task<long> ReadAllAndCheckAsync(PipeReader reader, int seed, CancellationToken token)
    {
        long read = 0;
        while (true)
        {
            ReadResult result = await reader.ReadAsync(token);
            foreach (ReadOnlyMemory<byte> segment in result.Buffer)
            {
                ReadOnlySpan<byte> span = segment.Span;
                for (int i = 0; i < span.Length; i++)
                {
                    if (span[i] != Pattern(read + i, seed))
                    {
                        Assert.Fail($"Byte {read + i} is 0x{span[i]:x2}, expected 0x{Pattern(read + i, seed):x2}.");
                    }
                }

                read += span.Length;
            }

            reader.AdvanceTo(result.Buffer.End);
            if (result.IsCompleted)
            {
                await reader.CompleteAsync();
                return read;
            }
        }
    }

    [TestMethod]
    public async Task BytesFlowBothWaysInOrderAndEndWithTheStream()
    {
        RdmaTransport transport = UsableTransport();
        using var cts = new CancellationTokenSource(Timeout);
        (IMigrationConnection client, IMigrationConnection server, IMigrationListener listener) = await ConnectPairAsync(transport, cts.Token);
        await using (listener)
        await using (client)
        await using (server)
        {
            const long forward = 256L << 20;
            const long back = 3L << 20;
            var clock = Stopwatch.StartNew();
            Task send = WriteAllAsync(client.Transport.Output, forward, seed: 1, cts.Token);
            Task sendBack = WriteAllAsync(server.Transport.Output, back, seed: 2, cts.Token);
            Task<long> receive = ReadAllAndCheckAsync(server.Transport.Input, seed: 1, cts.Token);
            Task<long> receiveBack = ReadAllAndCheckAsync(client.Transport.Input, seed: 2, cts.Token);
            await Task.WhenAll(send, sendBack, receive, receiveBack);
            Assert.AreEqual(forward, await receive);
            Assert.AreEqual(back, await receiveBack);
            TestContext.WriteLine($"{forward >> 20} MiB forward in {clock.Elapsed.TotalMilliseconds:F0} ms ({forward / clock.Elapsed.TotalSeconds / 1e9:F2} GB/s, including pattern checks)");
        }
    }

    [TestMethod]
    public async Task APageChannelReadReturnsTheSourceBytes()
    {
        RdmaTransport transport = UsableTransport();
        using var cts = new CancellationTokenSource(Timeout);
        (IMigrationConnection source, IMigrationConnection destination, IMigrationListener listener) = await ConnectPairAsync(transport, cts.Token);
        const int size = 4 << 20;
        nint ram = NativeMemoryAlloc(size);
        try
        {
            await using (listener)
            await using (source)
            await using (destination)
            {
                unsafe
                {
                    // SAFETY: ram holds size bytes allocated above and freed in finally.
                    var span = new Span<byte>((void*)ram, size);
                    for (int i = 0; i < size; i++)
                    {
                        span[i] = Pattern(i, 7);
                    }
                }

                ReadOnlyMemory<byte> descriptor = ((IPageChannel)source).ExposeRegion("pc.ram", ram, size);
                var pages = (IPageChannel)destination;
                pages.AttachRegion("pc.ram", descriptor);

                byte[] page = new byte[4096];
                var clock = Stopwatch.StartNew();
                await pages.ReadAsync("pc.ram", 0x12_3000, page, cts.Token);
                TestContext.WriteLine($"one 4 KiB RDMA READ: {clock.Elapsed.TotalMicroseconds:F0} µs (first, includes warm-up)");
                for (int i = 0; i < page.Length; i++)
                {
                    Assert.AreEqual(Pattern(0x12_3000 + i, 7), page[i], $"byte {i} of the page at 0x123000");
                }

                // Larger than one staging slot: split into several READs.
                byte[] large = new byte[(1 << 20) + 4096];
                await pages.ReadAsync("pc.ram", 0x20_0000, large, cts.Token);
                for (int i = 0; i < large.Length; i++)
                {
                    Assert.AreEqual(Pattern(0x20_0000 + i, 7), large[i], $"byte {i} of the 1 MiB read");
                }

                clock.Restart();
                const int reads = 1000;
                for (int i = 0; i < reads; i++)
                {
                    await pages.ReadAsync("pc.ram", (ulong)(i % 1024) * 4096, page, cts.Token);
                }

                TestContext.WriteLine($"4 KiB RDMA READ, one at a time: {clock.Elapsed.TotalMicroseconds / reads:F1} µs each");

                await Assert.ThrowsExactlyAsync<ArgumentOutOfRangeException>(
                    async () => await pages.ReadAsync("pc.ram", size - 100, page, cts.Token));
            }
        }
        finally
        {
            NativeMemoryFree(ram);
        }
    }

    [TestMethod]
    public async Task AbortFailsThePeersReadsWithADisconnect()
    {
        RdmaTransport transport = UsableTransport();
        using var cts = new CancellationTokenSource(Timeout);
        (IMigrationConnection client, IMigrationConnection server, IMigrationListener listener) = await ConnectPairAsync(transport, cts.Token);
        await using (listener)
        await using (client)
        await using (server)
        {
            ValueTask<ReadResult> pending = server.Transport.Input.ReadAsync(cts.Token);
            client.Abort(new InvalidOperationException("test abort"));
            var error = await Assert.ThrowsExactlyAsync<TransportException>(async () => await pending);
            StringAssert.Contains(error.Message, "disconnected (RDMA_CM_EVENT_DISCONNECTED) before the end of the stream");
            Assert.IsTrue(server.Closed.WaitHandle.WaitOne(TimeSpan.FromSeconds(10)), "Closed should fire on the peer.");
            var local = await Assert.ThrowsExactlyAsync<TransportException>(async () => await client.Transport.Input.ReadAsync(cts.Token));
            StringAssert.Contains(local.Message, "test abort");
        }
    }

    /// <summary>Stands in for guest RAM: memory the transport does not own, registered by ExposeRegion.</summary>
    private static unsafe nint NativeMemoryAlloc(int size)
    {
        // SAFETY: a fresh allocation, freed by NativeMemoryFree in the test's finally.
        return (nint)NativeMemory.AlignedAlloc((nuint)size, 4096);
    }

    private static unsafe void NativeMemoryFree(nint pointer)
    {
        // SAFETY: pointer came from NativeMemoryAlloc and is freed once, after the connections are disposed.
        NativeMemory.AlignedFree((void*)pointer);
    }
}
