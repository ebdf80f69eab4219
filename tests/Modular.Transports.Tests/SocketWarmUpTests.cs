extern alias tcp;

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
}
