extern alias tcp;

using RecyclingMemoryPool = tcp::Modular.Transports.Shared.RecyclingMemoryPool;
using SocketWarmUp = tcp::Modular.Transports.Shared.SocketWarmUp;

namespace Modular.Transports.Tests;

/// <summary>
/// The tcp and unix transports' warm-up runs one raw channel end to end over loopback (handshake,
/// a send, a receive, the end of the stream, closing) so a migration's first multifd channel does
/// not pay those first uses; it must work, and leave no socket behind.
/// </summary>
[TestClass]
public sealed class SocketWarmUpTests
{
    [TestMethod]
    public async Task TheWarmUpCarriesBytesOverARawChannel_AndLeavesNoDescriptorOpen()
    {
        Assert.IsTrue(await SocketWarmUp.ExerciseAsync(), "over loopback the warm-up's raw channel must carry its bytes and then end");
        int before = TransportTestKit.OpenFileDescriptors();
        Assert.IsTrue(await SocketWarmUp.ExerciseAsync(), "a second run works as well (the warm-up may be asked for more than once)");
        Assert.AreEqual(before, TransportTestKit.OpenFileDescriptors(), "the listener and both channel sockets must be closed");
    }

    [TestMethod]
    public void TheWarmUpFillsTheSegmentPoolANewPipeTakes()
    {
        RecyclingMemoryPool pool = RecyclingMemoryPool.Segments;
        var taken = new List<IDisposable>();
        while (pool.FreeCount > 0)
        {
            taken.Add(pool.Rent());
        }

        try
        {
            SocketWarmUp.Prepare();
            Assert.IsTrue(pool.FreeCount >= RecyclingMemoryPool.SegmentsPerPipe,
                $"after the warm-up a new connection's pipe must find its {RecyclingMemoryPool.SegmentsPerPipe} blocks free, not allocate them inside a migration (free: {pool.FreeCount})");
        }
        finally
        {
            taken.ForEach(block => block.Dispose());
        }
    }
}
