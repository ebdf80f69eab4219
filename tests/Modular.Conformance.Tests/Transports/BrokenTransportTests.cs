namespace Modular.Conformance.Tests.Transports;

/// <summary>The kit fails each deliberately broken transport, with a message that says what is wrong.</summary>
[TestClass]
public sealed class BrokenTransportTests
{
    private static async Task<string> KitFails(TransportFlaw flaw, Func<FlawedTransportKit, Task> test)
    {
        var kit = new FlawedTransportKit(flaw);
        AssertFailedException failure = await Assert.ThrowsExactlyAsync<AssertFailedException>(() => test(kit));
        Console.WriteLine(failure.Message);
        return failure.Message;
    }

    [TestMethod]
    public async Task ACorruptedByteIsReportedAtItsOffset()
    {
        string message = await KitFails(TransportFlaw.CorruptsOneByte, kit => kit.BytesArriveInOrderInBothDirectionsAtOnce());
        StringAssert.StartsWith(message, "mem forward path (both directions at once): byte 1000003 is 0x");
        StringAssert.EndsWith(message, "the transport corrupted, lost or reordered the stream (bytes must arrive exactly as written, in order).");
    }

    [TestMethod]
    public async Task ReorderedWritesAreCaughtInTheLargeTransfer()
    {
        string message = await KitFails(TransportFlaw.ReordersTwoWrites, kit => kit.ALargeTransferArrivesIntact());
        StringAssert.StartsWith(message, "mem large transfer: byte ");
        StringAssert.Contains(message, "the transport corrupted, lost or reordered the stream");
    }

    [TestMethod]
    public async Task AnUnboundedWriterFailsTheBackpressureTest()
    {
        string message = await KitFails(TransportFlaw.NoBackpressure, kit => kit.ASlowReaderHoldsTheWriterBack());
        StringAssert.StartsWith(message, "mem: a reader taking 64 KiB every 10 ms fell ");
        StringAssert.Contains(message, "MiB behind the writer (limit 64 MiB)");
        StringAssert.Contains(message, "FlushAsync must wait while the peer does not keep up (backpressure");
    }

    [TestMethod]
    public async Task AnAbortThatNeverReachesThePeerFails()
    {
        string message = await KitFails(TransportFlaw.AbortStaysLocal, kit => kit.AbortEndsThePeersReadsPromptlyWithAnError());
        Assert.AreEqual(
            "mem: 2 s after Abort the peer's read is still waiting. Abort must tear the connection down so the peer's reads end at once " +
            "(for a socket: close it with SO_LINGER 0 to send a reset), not leave it open until a timeout.", message);
    }

    [TestMethod]
    public async Task AnAbortThatLooksLikeACleanEndFails()
    {
        string message = await KitFails(TransportFlaw.AbortLooksLikeACleanEnd, kit => kit.AbortEndsThePeersReadsPromptlyWithAnError());
        StringAssert.StartsWith(message, "mem: after Abort the peer's read reported a clean end of stream instead of an error");
        StringAssert.Contains(message, "override PeerSeesAbortAsEndReason");
    }

    [TestMethod]
    public async Task ErrorsThatAreNotTransportExceptionsFail()
    {
        string connect = await KitFails(TransportFlaw.UnclearErrors, kit => kit.ConnectingWhereNobodyListensFailsClearly());
        Assert.AreEqual(
            "mem: ConnectAsync where nobody listens threw System.Collections.Generic.KeyNotFoundException: 'not found'. Throw TransportException " +
            "(wrapping the cause) so the operator gets one clear error naming the endpoint.", connect);
        string listen = await KitFails(TransportFlaw.UnclearErrors, kit => kit.ListeningWhereSomeoneListensFailsClearly());
        StringAssert.StartsWith(listen, "mem: ListenAsync on an endpoint already listened on threw System.InvalidOperationException: 'duplicate key'.");
    }

    [TestMethod]
    public async Task ALeakedFileDescriptorFailsTheDisposeTest()
    {
        string message = await KitFails(TransportFlaw.LeaksAFileDescriptor, kit => kit.DisposeReleasesEveryResource());
        StringAssert.StartsWith(message, "mem: after 5 connections and listeners were disposed, 5 more file descriptor(s) are open than before (open now: ");
        StringAssert.EndsWith(message, "DisposeAsync of a connection and of a listener must close every socket, file and handle they opened.");
    }

    [TestMethod]
    public async Task MissingOptionalCapabilitiesAreInconclusiveNotFailures()
    {
        var kit = new FlawedTransportKit(TransportFlaw.None);
        var skipped = await Assert.ThrowsExactlyAsync<AssertInconclusiveException>(() => kit.ExtraChannelsCarryTheirOwnStreams());
        StringAssert.EndsWith(skipped.Message, "mem does not offer IExtraChannels, which is optional.");
        skipped = await Assert.ThrowsExactlyAsync<AssertInconclusiveException>(() => kit.RawChannelsCarryPagesBothWays());
        StringAssert.EndsWith(skipped.Message, "mem does not offer IRawChannels, which is optional.");
    }
}
