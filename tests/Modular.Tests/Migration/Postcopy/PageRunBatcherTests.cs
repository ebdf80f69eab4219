using Modular.Core.Memory;
using Modular.Core.Migration.Postcopy;

namespace Modular.Tests.Migration.Postcopy;

/// <summary>
/// Postcopy pages of 4 KiB blocks after LISTEN are placed in runs (<see cref="PageRunBatcher"/>,
/// through <see cref="HostPageAssembler"/>): consecutive pages wait until the loader flushes, then
/// go in one placement; anything that does not extend the run starts a new one; a requested page
/// inside a run has its latency recorded when the run is placed. Real guest RAM, a recording backend.
/// </summary>
[TestClass]
public sealed class PageRunBatcherTests
{
    private const int Page = RamBlock.TargetPageSize;

    [TestMethod]
    public void ConsecutivePages_WaitForTheFlush_ThenGoInOnePlacement()
    {
        using var scope = new Scope(armed: true);
        (RecordingFaultBackend backend, PostcopyRam postcopy, RamBlock block, HostPageAssembler assembler) = scope;

        for (ulong page = 10; page < 14; page++)
        {
            assembler.Add(block, page * Page, Pattern(page), isZero: false);
        }

        Assert.IsEmpty(backend.Placed, "nothing is placed before the loader flushes");
        Assert.AreEqual(PageState.Missing, postcopy.Map(0).GetState(10));

        assembler.Flush();

        CollectionAssert.AreEqual(new[] { (block.HostAddress + (10 * Page), 4) }, backend.Runs);
        Assert.HasCount(4, backend.Placed);
        for (int i = 0; i < 4; i++)
        {
            Assert.AreEqual(block.HostAddress + ((10 + i) * Page), backend.Placed[i].Address);
            CollectionAssert.AreEqual(Pattern((ulong)(10 + i)), backend.Placed[i].Contents, $"page {10 + i} carries its own contents");
        }

        Assert.AreEqual(4UL, postcopy.Map(0).ReceivedCount);
        assembler.Flush();
        Assert.HasCount(1, backend.Runs, "a second flush with nothing waiting places nothing");
    }

    [TestMethod]
    public void AGapAZeroPageOrAFullRun_StartsANewRun()
    {
        using var scope = new Scope(armed: true);
        (RecordingFaultBackend backend, PostcopyRam postcopy, RamBlock block, HostPageAssembler assembler) = scope;

        assembler.Add(block, 0, Pattern(0), isZero: false);
        assembler.Add(block, 1 * Page, Pattern(1), isZero: false);
        assembler.Add(block, 5 * Page, Pattern(5), isZero: false); // gap: pages 0-1 go
        assembler.Add(block, 6 * Page, new byte[Page], isZero: true); // zero page: page 5 goes (alone), then the zero page
        for (ulong page = 100; page < 100 + PageRunBatcher.MaxPages + 2; page++)
        {
            assembler.Add(block, page * Page, Pattern(page), isZero: false); // a full run, then two more
        }

        assembler.Flush();

        CollectionAssert.AreEqual(
            new[] { (block.HostAddress, 2), (block.HostAddress + (100 * Page), PageRunBatcher.MaxPages), (block.HostAddress + ((100 + PageRunBatcher.MaxPages) * Page), 2) },
            backend.Runs);
        CollectionAssert.AreEqual(new[] { (block.HostAddress + (6 * Page), (ulong)Page) }, backend.ZeroPlaced);
        Assert.IsTrue(backend.Placed.Any(p => p.Address == block.HostAddress + (5 * Page)), "page 5 was placed on its own when the zero page ended its run");
        Assert.AreEqual(2UL + 1 + 1 + PageRunBatcher.MaxPages + 2, postcopy.Map(0).ReceivedCount);
    }

    [TestMethod]
    public void ARequestedPageInARun_HasItsLatencyRecorded_AndAPresentPageStaysReceived()
    {
        using var scope = new Scope(armed: true);
        (RecordingFaultBackend backend, PostcopyRam postcopy, RamBlock block, HostPageAssembler assembler) = scope;

        // Page 21 is requested and arrives first on another channel; page 22 is requested and waits.
        Assert.AreEqual(FaultOutcome.NeedsRequest, postcopy.OnFault(block.HostAddress + (21 * Page), 0, out _, out _));
        Assert.AreEqual(FaultOutcome.NeedsRequest, postcopy.OnFault(block.HostAddress + (22 * Page), 0, out _, out _));
        postcopy.Place(block, 21 * Page, Pattern(21), isZero: false);
        Thread.Sleep(5);
        for (ulong page = 20; page < 24; page++)
        {
            assembler.Add(block, page * Page, Pattern(page), isZero: false);
        }

        assembler.Flush();

        Assert.AreEqual(2L, postcopy.Latency.Count, "both requests are counted once each: page 21 by its first placement, page 22 by the run");
        Assert.IsGreaterThanOrEqualTo(4L, postcopy.Latency.TotalMs, "page 22 waited about 5 ms");
        Assert.AreEqual(PageState.Received, postcopy.Map(0).GetState(21));
        Assert.AreEqual(PageState.Received, postcopy.Map(0).GetState(22));
        Assert.AreEqual(4UL, postcopy.Map(0).ReceivedCount);
    }

    [TestMethod]
    public void BeforeListen_PagesAreCopiedStraightIn_WithoutARun()
    {
        using var scope = new Scope(armed: false);
        (RecordingFaultBackend backend, PostcopyRam postcopy, RamBlock block, HostPageAssembler assembler) = scope;

        assembler.Add(block, 7 * Page, Pattern(7), isZero: false);

        Assert.IsEmpty(backend.Runs);
        var back = new byte[Page];
        block.CopyOut(7 * Page, back);
        CollectionAssert.AreEqual(Pattern(7), back);
        Assert.AreEqual(PageState.Received, postcopy.Map(0).GetState(7));
    }

    /// <summary>1 MiB of guest RAM, postcopy's RAM over a recording backend (armed: after LISTEN), an assembler.</summary>
    private sealed class Scope : IDisposable
    {
        private readonly GuestRam _ram = GuestRam.Create(1 << 20);
        private readonly RecordingFaultBackend _backend = new();
        private readonly PostcopyRam _postcopy;

        public Scope(bool armed)
        {
            _postcopy = new PostcopyRam(_ram, _backend);
            if (armed)
            {
                _postcopy.Arm();
            }
        }

        public void Deconstruct(out RecordingFaultBackend backend, out PostcopyRam postcopy, out RamBlock block, out HostPageAssembler assembler)
        {
            backend = _backend;
            postcopy = _postcopy;
            block = _ram.Blocks[0];
            assembler = new HostPageAssembler(_postcopy);
        }

        public void Dispose()
        {
            _postcopy.Dispose();
            _ram.Dispose();
        }
    }

    private static byte[] Pattern(ulong page)
    {
        var bytes = new byte[Page];
        for (int i = 0; i < bytes.Length; i++)
        {
            bytes[i] = (byte)((page * 13) + ((ulong)i % 241) + 1);
        }

        return bytes;
    }
}
