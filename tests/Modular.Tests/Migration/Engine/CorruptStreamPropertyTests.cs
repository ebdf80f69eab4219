using CsCheck;
using Modular.Abstractions.Devices;
using Modular.Abstractions.Transports;
using Modular.Core.Migration.Engine;
using Modular.Core.Migration.Stream;

namespace Modular.Tests.Migration.Engine;

/// <summary>
/// Many random corruptions of a real stream (byte flips, truncations, insertions, deletions): every
/// load either completes or fails with an <see cref="IncomingMigrationException"/> caused by a stream,
/// device state or transport error; none crashes with anything else, none hangs.
/// </summary>
[TestClass]
public sealed class CorruptStreamPropertyTests
{
    private static readonly TimeSpan LoadTimeout = TimeSpan.FromSeconds(20);

    /// <summary>One corruption: what, where (a fraction of the stream, biased to the start where the structure is), and with what.</summary>
    private sealed record Corruption(int Kind, double Where, byte Value, int Count)
    {
        public byte[] Apply(byte[] stream)
        {
            // Most of a stream is page data; half of the corruptions land in its first and last
            // 64 KiB, where the headers, device sections, EOF and VM description are.
            int at = Where < 0.25 ? (int)(Where * 4 * Math.Min(65536, stream.Length))
                : Where > 0.75 ? stream.Length - 1 - (int)((Where - 0.75) * 4 * Math.Min(65536, stream.Length - 1))
                : (int)(Where * stream.Length);
            at = Math.Clamp(at, 0, stream.Length - 1);
            return Kind switch
            {
                0 => Flip(stream, at),
                1 => stream[..at],
                2 => [.. stream[..at], .. Enumerable.Repeat(Value, Count), .. stream[at..]],
                _ => [.. stream[..at], .. stream[Math.Min(stream.Length, at + Count)..]],
            };
        }

        private byte[] Flip(byte[] stream, int at)
        {
            byte[] copy = (byte[])stream.Clone();
            for (int i = 0; i < Count && at + i < copy.Length; i++)
            {
                copy[at + i] ^= Value == 0 ? (byte)0x80 : Value;
            }

            return copy;
        }

        public override string ToString() => $"{(Kind switch { 0 => "flip", 1 => "truncate", 2 => "insert", _ => "delete" })} at {Where:F6} value 0x{Value:x2} count {Count}";
    }

    [TestMethod]
    [Timeout(600_000, CooperativeCancellation = true)]
    public async Task RandomCorruptions_NeverCrashOrHang() => await LoadCorruptionsAsync(iterations: 400, overUnixSocket: false);

    /// <summary>The same over the unix transport, whose destination receives precopy pages straight into guest RAM and hands back what it did not expect.</summary>
    [TestMethod]
    [Timeout(600_000, CooperativeCancellation = true)]
    public async Task RandomCorruptionsOverAUnixSocket_NeverCrashOrHang() => await LoadCorruptionsAsync(iterations: 120, overUnixSocket: true);

    private static async Task LoadCorruptionsAsync(int iterations, bool overUnixSocket)
    {
        byte[] stream = await RealStream.GetAsync();
        IncomingMigrationException? intact = await RealStream.LoadAsync(stream, LoadTimeout, overUnixSocket: overUnixSocket);
        Assert.IsNull(intact, $"the stream as it is loads: {intact?.Message}");
        Gen<Corruption> corruptions =
            from kind in Gen.Int[0, 3]
            from position in Gen.Double[0, 1]
            from value in Gen.Byte
            from count in Gen.Int[1, 16]
            select new Corruption(kind, position, value, count);

        int completed = 0, failed = 0;
        corruptions.Sample(
            corruption =>
            {
                IncomingMigrationException? failure = RealStream.LoadAsync(corruption.Apply(stream), LoadTimeout, overUnixSocket: overUnixSocket).GetAwaiter().GetResult();
                if (failure is null)
                {
                    completed++;
                    return;
                }

                failed++;
                Assert.IsTrue(
                    failure.InnerException is MigrationStreamException or DeviceStateException or TransportException,
                    $"{corruption}: {failure.InnerException?.GetType().Name}: {failure.Message}");
            },
            iter: iterations,
            threads: 1);
        Assert.IsGreaterThan(0, failed, "no corruption was detected at all");
        Console.WriteLine($"{failed} corruptions failed cleanly, {completed} loaded (they hit page data)");
    }
}
