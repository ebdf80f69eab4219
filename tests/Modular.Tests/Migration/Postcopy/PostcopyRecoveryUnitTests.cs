using System.IO.Pipelines;
using Modular.Core.Memory;
using Modular.Core.Migration.Engine;
using Modular.Core.Migration.Postcopy;
using Modular.Core.Migration.State;
using Modular.Core.Migration.Stream;
using Modular.Tests.Migration.Stream;

namespace Modular.Tests.Migration.Postcopy;

/// <summary>
/// The pieces of postcopy recovery, one by one: the statuses, the destination's received bitmap and
/// pending requests, the source's reload of its migration bitmap from that bitmap, and the return-path
/// writer that drops messages while paused and writes to the recovered connection afterwards.
/// </summary>
[TestClass]
public sealed class PostcopyRecoveryUnitTests
{
    [TestMethod]
    public void Statuses_PauseRecoverAndBack_OnlyFromPostcopy()
    {
        var machine = new MigrationStatusMachine();
        var seen = new List<MigrationStatus>();
        machine.Changed += seen.Add;
        machine.MoveTo(MigrationStatus.Setup);
        machine.MoveTo(MigrationStatus.Active);
        Assert.IsFalse(machine.TryMoveTo(MigrationStatus.PostcopyPaused, out _), "precopy never pauses: it fails or is cancelled with the guest safe on the source");
        machine.MoveTo(MigrationStatus.PostcopyActive);
        machine.MoveTo(MigrationStatus.PostcopyPaused);
        Assert.IsFalse(machine.TryMoveTo(MigrationStatus.Completed, out _), "a paused migration cannot complete without a recovery");
        Assert.IsFalse(machine.TryMoveTo(MigrationStatus.PostcopyActive, out _), "back to postcopy-active only through postcopy-recover");
        machine.MoveTo(MigrationStatus.PostcopyRecover);
        machine.MoveTo(MigrationStatus.PostcopyPaused); // the recovery's connection failed too
        machine.MoveTo(MigrationStatus.PostcopyRecover);
        machine.MoveTo(MigrationStatus.PostcopyActive);
        machine.MoveTo(MigrationStatus.Completed);
        CollectionAssert.AreEqual(
            new[] { "setup", "active", "postcopy-active", "postcopy-paused", "postcopy-recover", "postcopy-paused", "postcopy-recover", "postcopy-active", "completed" },
            seen.Select(s => s.ToQmp()).ToArray());

        var failing = new MigrationStatusMachine();
        failing.MoveTo(MigrationStatus.Setup);
        failing.MoveTo(MigrationStatus.Active);
        failing.MoveTo(MigrationStatus.PostcopyActive);
        failing.MoveTo(MigrationStatus.PostcopyPaused);
        failing.MoveTo(MigrationStatus.Failed);
        Assert.IsTrue(failing.IsFinished);
    }

    [TestMethod]
    public void ReceivedBitmap_FromTheDestination_TellsTheSourceExactlyWhatToResend()
    {
        // 200 pages: not a multiple of 64, so the last word is partly beyond the block.
        using GuestRam ram = GuestRam.Create(200 * 4096);
        RamBlock block = ram.Blocks[0];
        using var postcopy = new PostcopyRam(ram, new RecordingFaultBackend());
        postcopy.Arm();
        ulong[] received = [0, 1, 7, 8, 63, 64, 130, 199];
        foreach (ulong page in received)
        {
            postcopy.Place(block, page * 4096, new byte[4096], isZero: false);
        }

        // Pages 5 and 150 were requested (a vCPU waits for them) and never arrived.
        Assert.AreEqual(FaultOutcome.NeedsRequest, postcopy.OnFault(block.HostAddress + (5 * 4096) + 12, 0, out _, out _));
        Assert.AreEqual(FaultOutcome.NeedsRequest, postcopy.OnFault(block.HostAddress + (150 * 4096), 0, out _, out _));

        byte[] bitmap = postcopy.ReceivedBitmap(0);
        Assert.HasCount(32, bitmap, "200 bits round up to four 64-bit words, as QEMU pads the bitmap to 8 bytes");
        Assert.AreEqual(0b1000_0011, bitmap[0], "bit n of byte n/8 is page n (little-endian bit order): pages 0, 1 and 7");
        Assert.AreEqual(0b0000_0001, bitmap[1], "page 8");
        Assert.AreEqual(0b1000_0000, bitmap[7], "page 63");
        CollectionAssert.AreEqual(new[] { (block, 5UL * 4096), (block, 150UL * 4096) }, postcopy.PendingRequests());

        // Over the wire (RECV_BITMAP's trailer) and into the source's migration bitmap.
        byte[] wire = StreamTestPipes.Write(w => new ReceivedBitmap(bitmap).WriteTo(w));
        ReceivedBitmap decoded = ReceivedBitmap.ReadFromAsync(StreamTestPipes.Reader(wire, chunk: 5)).AsTask().GetAwaiter().GetResult();
        using var saver = new RamSaver(ram, new MigrationStats());
        long lacking = saver.ResendNotReceived(0, decoded.Bitmap);
        Assert.AreEqual(200L - received.Length, lacking);
        DirtyBitmap dirty = saver.Dirty[0];
        for (long page = 0; page < 200; page++)
        {
            Assert.AreEqual(!received.Contains((ulong)page), dirty.Test(page), $"page {page}");
        }

        Assert.AreEqual(200L - received.Length, saver.DirtyPages, "nothing past the block's last page is marked");
    }

    [TestMethod]
    public void ResendNotReceived_RefusesABitmapShorterThanTheBlock_NamingIt()
    {
        using GuestRam ram = GuestRam.Create(200 * 4096);
        using var saver = new RamSaver(ram, new MigrationStats());
        InvalidOperationException ex = Assert.ThrowsExactly<InvalidOperationException>(() => saver.ResendNotReceived(0, new byte[16]));
        StringAssert.Contains(ex.Message, ram.Blocks[0].Name);
        StringAssert.Contains(ex.Message, "has 16 bytes");
    }

    [TestMethod]
    public async Task ReturnPathWriter_DropsWhilePaused_ThenWritesToTheRecoveredConnection()
    {
        var first = new Pipe();
        var writer = new ReturnPathWriter(first.Writer);
        await writer.SendAsync(ReturnPathMessage.Pong(1));
        writer.Pause();
        writer.Send(ReturnPathMessage.ReqPages(0, 4096)); // the fault thread while paused: dropped, no exception
        await writer.SendAsync(ReturnPathMessage.Pong(2));
        Assert.IsTrue(writer.IsPaused);

        var second = new Pipe();
        await writer.ReconnectAsync(second.Writer);
        Assert.IsFalse(writer.IsPaused);
        await writer.SendAsync(ReturnPathMessage.RecvBitmap("pc.ram"), new ReceivedBitmap(new byte[8]).WriteTo);
        await writer.SendAsync(ReturnPathMessage.ResumeAck());
        first.Writer.Complete();
        second.Writer.Complete();

        var old = new MigrationStreamReader(first.Reader);
        Assert.AreEqual(1u, (await ReturnPathMessage.ReadFromAsync(old)).Value);
        Assert.IsTrue(await old.IsAtEndAsync(), "nothing written while paused reaches the old connection");

        var recovered = new MigrationStreamReader(second.Reader);
        ReturnPathMessage announce = await ReturnPathMessage.ReadFromAsync(recovered);
        Assert.AreEqual(ReturnPathMessageType.RecvBitmap, announce.Type);
        Assert.AreEqual("pc.ram", announce.BlockId);
        Assert.HasCount(8, (await ReceivedBitmap.ReadFromAsync(recovered)).Bitmap);
        Assert.AreEqual(ReturnPathMessageType.ResumeAck, (await ReturnPathMessage.ReadFromAsync(recovered)).Type);
        Assert.IsTrue(await recovered.IsAtEndAsync());
    }

    [TestMethod]
    public void ReturnPathWriter_WhenRecoverable_AFailedWritePausesAndReportsInsteadOfThrowing()
    {
        var pipe = new Pipe();
        pipe.Reader.Complete(); // the source is gone: the next flush says so
        var writer = new ReturnPathWriter(pipe.Writer);
        Exception? reported = null;
        writer.OnFailureWhileRecoverable = ex => reported = ex;
        writer.Send(ReturnPathMessage.ReqPages(0, 4096));
        Assert.IsNotNull(reported, "the failure is reported (the connection is then ended and the listen thread pauses)");
        Assert.IsTrue(writer.IsPaused);
        writer.Send(ReturnPathMessage.ReqPages(4096, 4096)); // dropped quietly from now on

        var plain = new Pipe();
        plain.Reader.Complete();
        var failing = new ReturnPathWriter(plain.Writer);
        Assert.ThrowsExactly<IOException>(() => failing.Send(ReturnPathMessage.ReqPages(0, 4096)), "without recovery the fault thread's failure stays an error");
    }
}
