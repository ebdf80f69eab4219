using System.Buffers;
using System.IO.Pipelines;
using System.Net.Sockets;
using Modular.Abstractions.Transports;

namespace Modular.Transports.Tests;

/// <summary>Helpers to move bytes through a connection and check them.</summary>
internal static class TransportTestKit
{
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);

    /// <summary>Writes <paramref name="total"/> pseudo-random bytes in <paramref name="chunk"/>-byte writes; returns their checksum.</summary>
    public static async Task<ulong> SendAsync(PipeWriter output, long total, int chunk = 64 * 1024, bool complete = true)
    {
        var hash = new Fnv1a();
        var random = new Random(1234);
        byte[] block = new byte[chunk];
        for (long sent = 0; sent < total;)
        {
            int n = (int)Math.Min(chunk, total - sent);
            random.NextBytes(block.AsSpan(0, Math.Min(n, 256)));
            Span<byte> span = output.GetSpan(n);
            block.AsSpan(0, n).CopyTo(span);
            hash.Append(block.AsSpan(0, n));
            output.Advance(n);
            await output.FlushAsync();
            sent += n;
        }

        if (complete)
        {
            await output.CompleteAsync();
        }

        return hash.Value;
    }

    /// <summary>Reads until the input ends; returns byte count and checksum.</summary>
    public static async Task<(long Count, ulong Hash)> ReceiveAllAsync(PipeReader input)
    {
        var hash = new Fnv1a();
        long count = 0;
        while (true)
        {
            ReadResult result = await input.ReadAsync();
            foreach (ReadOnlyMemory<byte> segment in result.Buffer)
            {
                hash.Append(segment.Span);
                count += segment.Length;
            }

            input.AdvanceTo(result.Buffer.End);
            if (result.IsCompleted)
            {
                return (count, hash.Value);
            }
        }
    }

    public static int OpenFileDescriptors() => Directory.GetFiles("/proc/self/fd").Length;

    public static async Task<T> WithTimeout<T>(this Task<T> task) => await task.WaitAsync(Timeout);

    public static async Task WithTimeout(this Task task) => await task.WaitAsync(Timeout);

    /// <summary>A connected pair of unix stream sockets (the socket file is removed once connected).</summary>
    public static async Task<(Socket Client, Socket Server)> UnixPairAsync()
    {
        string path = Path.Combine(Path.GetTempPath(), $"modular-test-{Guid.NewGuid():N}.sock");
        using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(path));
        listener.Listen(1);
        var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        Task<Socket> accepted = listener.AcceptAsync();
        await client.ConnectAsync(new UnixDomainSocketEndPoint(path));
        Socket server = await accepted;
        File.Delete(path);
        return (client, server);
    }
}

/// <summary>FNV-1a, 64-bit: an order-sensitive checksum fed in pieces of any size.</summary>
internal sealed class Fnv1a
{
    public ulong Value { get; private set; } = 14695981039346656037UL;

    public void Append(ReadOnlySpan<byte> bytes)
    {
        ulong h = Value;
        foreach (byte b in bytes)
        {
            h = (h ^ b) * 1099511628211UL;
        }

        Value = h;
    }
}
