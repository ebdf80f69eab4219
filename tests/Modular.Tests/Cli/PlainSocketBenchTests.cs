using Modular.Cli.Bench;
using Modular.Core.Memory;

namespace Modular.Tests.Cli;

/// <summary>
/// The bench's memory-to-memory socket: it moves every byte of a guest-sized source memory into the
/// destination memory, page by page in place (a figure from a measurement that lost or misplaced
/// bytes would mean nothing), and refuses to move more than the memory holds.
/// </summary>
[TestClass]
public sealed class PlainSocketBenchTests
{
    private const ulong Size = 64UL << 20;

    [TestMethod]
    [DataRow("tcp")]
    [DataRow("unix")]
    public async Task MemoryToMemory_MovesEveryPageIntoItsPlace(string scheme)
    {
        string directory = Directory.CreateTempSubdirectory("plainsock").FullName;
        try
        {
            using GuestSizedMemory memory = GuestSizedMemory.Create(Size);
            ulong pages = Size / RamBlock.TargetPageSize;
            Assert.AreEqual(0UL, memory.DestinationMark(0), "nothing has arrived yet");
            Assert.AreEqual(0UL, memory.DestinationMark(pages - 1), "nothing has arrived yet");

            double rate = await PlainSocketBench.MeasureAsync(scheme, memory.Size, directory, memory);

            Assert.IsTrue(rate > 0 && double.IsFinite(rate), $"rate {rate}");
            for (ulong page = 0; page < pages; page++)
            {
                if (memory.DestinationMark(page) != page + 1)
                {
                    Assert.Fail($"destination page {page} starts with {memory.DestinationMark(page)}, not {page + 1}");
                }
            }

            Assert.IsFalse(File.Exists(Path.Combine(directory, "plain.sock")), "the unix socket file is removed");
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    [TestMethod]
    public async Task MoreThanTheMemoryHolds_IsRefused()
    {
        using GuestSizedMemory memory = GuestSizedMemory.Create(2UL << 20);

        await Assert.ThrowsExactlyAsync<ArgumentOutOfRangeException>(() => PlainSocketBench.MeasureAsync("tcp", memory.Size + 1, Path.GetTempPath(), memory));
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => memory.DestinationMark(memory.Size / RamBlock.TargetPageSize));
    }
}
