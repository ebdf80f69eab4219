using Modular.Abstractions.Faults;
using Modular.Abstractions.Plugins;
using Modular.Core.Memory;
using static Modular.Tests.Support.TestPages;
using Modular.Core.Migration.Postcopy;
using Modular.Core.Plugins;

namespace Modular.Tests.Migration.Postcopy;

/// <summary>
/// Postcopy on shared guest RAM (machine.memory-backend memfd, every destination's default): pages
/// are written through the block's second mapping and mapped with minor faults (UFFDIO_CONTINUE).
/// A page is written once even when it arrives twice, so the guest's own writes after it was mapped
/// survive; a mapped run wakes whoever waited; a page received before LISTEN that the guest's mapping
/// lost is mapped again on its fault. Real userfaultfd (the plugin from disk), real shared memory;
/// armed RAM is only touched natively (RamBlock's memcpy).
/// </summary>
[TestClass]
public sealed class SharedRamPostcopyTests
{
    private const int Page = RamBlock.TargetPageSize;
    private static readonly TimeSpan Blocked = TimeSpan.FromMilliseconds(200);
    private static readonly TimeSpan Released = TimeSpan.FromSeconds(10);

    [TestMethod]
    public void APageArrivingTwice_IsWrittenOnce_AndTheGuestsWritesSurvive()
    {
        using var scope = new Scope();
        (PostcopyRam postcopy, RamBlock block) = scope.Listen();
        var assembler = new HostPageAssembler(postcopy);

        postcopy.Place(block, 3 * Page, Pattern(3), isZero: false); // the requested copy, on the preempt channel
        block.CopyIn(3 * Page + 100, [0xAB, 0xCD]);                  // the guest runs and changes it
        for (int page = 2; page < 6; page++)
        {
            assembler.Add(block, (ulong)page * Page, Pattern(page + 50), isZero: false); // the stream's copies
        }

        assembler.Flush();
        postcopy.Place(block, 3 * Page, Pattern(99), isZero: false); // and once more

        byte[] expected = Pattern(3);
        expected[100] = 0xAB;
        expected[101] = 0xCD;
        CollectionAssert.AreEqual(expected, Read(block, 3), "the page keeps its first copy and the guest's write");
        CollectionAssert.AreEqual(Pattern(52), Read(block, 2));
        CollectionAssert.AreEqual(Pattern(55), Read(block, 5));
        Assert.AreEqual(4UL, postcopy.Map(0).ReceivedCount);
    }

    [TestMethod]
    public void AReaderBlockedOnAMissingPage_IsWokenByTheRunThatMapsIt()
    {
        using var scope = new Scope();
        (PostcopyRam postcopy, RamBlock block) = scope.Listen();
        var assembler = new HostPageAssembler(postcopy);

        byte[] seen = new byte[Page];
        var reader = new Thread(() => block.CopyOut(10 * Page, seen)) { IsBackground = true };
        reader.Start();
        Assert.IsFalse(reader.Join(Blocked), "page 10 has not arrived: the reader must wait");

        for (int page = 8; page < 13; page++)
        {
            assembler.Add(block, (ulong)page * Page, Pattern(page), isZero: page == 12);
        }

        Assert.IsFalse(reader.Join(Blocked), "written but not mapped until the loader flushes");
        assembler.Flush();
        Assert.IsTrue(reader.Join(Released), "mapping the run must wake the reader");
        CollectionAssert.AreEqual(Pattern(10), seen);
        Assert.IsTrue(block.IsZeroPage(12 * Page));
        Assert.AreEqual(5UL, postcopy.Map(0).ReceivedCount);
    }

    [TestMethod]
    public void TheRequestedCopyOfAPageWrittenIntoAnUnmappedRun_MapsItAtOnce_AndTheRunDoesNotOverwriteTheGuest()
    {
        using var scope = new Scope();
        (PostcopyRam postcopy, RamBlock block) = scope.Listen();
        var assembler = new HostPageAssembler(postcopy);
        for (int page = 14; page < 18; page++)
        {
            assembler.Add(block, (ulong)page * Page, Pattern(page), isZero: false); // the stream's run, written, not mapped yet
        }

        byte[] seen = new byte[Page];
        var reader = new Thread(() => block.CopyOut(15 * Page, seen)) { IsBackground = true };
        reader.Start();
        Assert.IsFalse(reader.Join(Blocked), "written into the run but not mapped: the reader waits");
        Assert.AreEqual(FaultOutcome.AlreadyReceived, postcopy.OnFault(block.HostAddress + (15 * Page), 0, out _, out _),
            "the fault finds the page written: it is mapped then, and nothing is asked of the source");
        Assert.IsTrue(reader.Join(Released), "mapping at the fault wakes the reader before the run is mapped");
        CollectionAssert.AreEqual(Pattern(15), seen);

        // Page 16 was asked for before its run came (the request is on its way); its copy from the
        // preempt channel finds the page taken and written, and maps it without waiting for the run.
        postcopy.Map(0).TryRequest(16);
        postcopy.Place(block, 16 * Page, Pattern(16), isZero: false);
        Assert.AreEqual(PageState.Received, postcopy.Map(0).GetState(16), "the preempt copy mapped the written page");
        Assert.AreEqual(PageState.Missing, postcopy.Map(0).GetState(17), "the rest of the run waits for the run");

        block.CopyIn(16 * Page + 8, [0x11, 0x22]); // the guest runs and changes it
        assembler.Flush();                          // the listen thread maps its run at last
        byte[] expected = Pattern(16);
        expected[8] = 0x11;
        expected[9] = 0x22;
        CollectionAssert.AreEqual(expected, Read(block, 16), "mapping the run later leaves the guest's write");
        CollectionAssert.AreEqual(Pattern(17), Read(block, 17));
        Assert.AreEqual(4UL, postcopy.Map(0).ReceivedCount);
        Assert.AreEqual(1L, postcopy.Latency.Count, "only the page that had been requested has a latency (once)");
        Assert.AreEqual(1L, postcopy.MappedAheadOnFault);
        Assert.AreEqual(1L, postcopy.MappedAheadOnCopy);
    }

    [TestMethod]
    public void AZeroPage_OverwritesWhatTheMemoryHeldBefore()
    {
        using var scope = new Scope();
        RamBlock block = scope.Block;
        block.CopyIn(20 * Page, Pattern(20)); // populated or left over while the destination waited
        (PostcopyRam postcopy, _) = scope.Listen();

        postcopy.Place(block, 20 * Page, new byte[Page], isZero: true);

        Assert.IsTrue(block.IsZeroPage(20 * Page));
        Assert.AreEqual(PageState.Received, postcopy.Map(0).GetState(20));
    }

    [TestMethod]
    public void APageReceivedBeforeListen_ThatTheGuestsMappingLost_IsMappedAgainOnItsFault()
    {
        using var scope = new Scope();
        (PostcopyRam postcopy, RamBlock block) = scope.Advise();
        postcopy.Place(block, 30 * Page, Pattern(30), isZero: false); // precopy phase: a plain copy
        postcopy.Arm();
        block.Unmap(30 * Page, Page); // as reclaim would

        byte[] seen = new byte[Page];
        var reader = new Thread(() => block.CopyOut(30 * Page, seen)) { IsBackground = true };
        reader.Start();
        Assert.IsFalse(reader.Join(Blocked), "the armed mapping faults on a page it does not map");

        Assert.AreEqual(FaultOutcome.AlreadyReceived, postcopy.OnFault(block.HostAddress + (30 * Page) + 8, 0, out _, out _));
        Assert.IsTrue(reader.Join(Released), "the fault on a received page maps it without asking the source");
        CollectionAssert.AreEqual(Pattern(30), seen);
    }

    [TestMethod]
    public void ADiscardedPage_FaultsAgain_AndShowsTheCopyThatArrivesAfterListen()
    {
        using var scope = new Scope();
        (PostcopyRam postcopy, RamBlock block) = scope.Advise();
        postcopy.Place(block, 40 * Page, Pattern(40), isZero: false);
        postcopy.Discard(block, 40 * Page, Page); // sent in precopy, dirtied again
        Assert.AreEqual(PageState.Missing, postcopy.Map(0).GetState(40));
        postcopy.Arm();

        byte[] seen = new byte[Page];
        var reader = new Thread(() => block.CopyOut(40 * Page, seen)) { IsBackground = true };
        reader.Start();
        Assert.IsFalse(reader.Join(Blocked), "a discarded page must fault, not show its old copy");
        Assert.AreEqual(FaultOutcome.NeedsRequest, postcopy.OnFault(block.HostAddress + (40 * Page), 0, out _, out _));

        postcopy.Place(block, 40 * Page, Pattern(41), isZero: false);
        Assert.IsTrue(reader.Join(Released));
        CollectionAssert.AreEqual(Pattern(41), seen);
        Assert.AreEqual(1L, postcopy.Latency.Count, "the request's latency is recorded when its page is mapped");
    }

    [TestMethod]
    public void WithABackendThatCannotMapSharedMemory_TheMemoryIsFreedAtAdvise_AndCopiesArePlaced()
    {
        using GuestRam ram = GuestRam.Create(1 << 20, GuestRamBacking.SharedMemfd);
        RamBlock block = ram.Blocks[0];
        block.CopyIn(6 * Page, Pattern(6)); // populated or left over while waiting
        var backend = new RecordingFaultBackend();
        using var postcopy = new PostcopyRam(ram, backend);
        Assert.IsFalse(postcopy.MapsShared(block));
        StringAssert.Contains(postcopy.SharedRamUnavailableReason, "ISharedRamFaultBackend");

        postcopy.PrepareAtAdvise();
        Assert.IsTrue(block.IsZeroPage(6 * Page), "a copy can only be placed into a missing page: the shared memory must be freed at ADVISE");

        postcopy.Arm();
        var assembler = new HostPageAssembler(postcopy);
        for (int page = 6; page < 9; page++)
        {
            assembler.Add(block, (ulong)page * Page, Pattern(page), isZero: false);
        }

        assembler.Flush();
        CollectionAssert.AreEqual(new[] { (block.HostAddress + (6 * Page), 3) }, backend.Runs);
        Assert.AreEqual(3UL, postcopy.Map(0).ReceivedCount);
    }

    /// <summary>1 MiB of shared guest RAM and postcopy's RAM over the real userfaultfd plugin.</summary>
    private sealed class Scope : IDisposable
    {
        private readonly PluginCatalog _catalog = PluginCatalog.Load([PluginCatalog.DefaultDirectory]);
        private readonly GuestRam _ram = GuestRam.Create(1 << 20, GuestRamBacking.SharedMemfd);
        private PostcopyRam? _postcopy;

        public RamBlock Block => _ram.Blocks[0];

        /// <summary>POSTCOPY_ADVISE: the guest's mapping emptied, not armed yet.</summary>
        public (PostcopyRam Postcopy, RamBlock Block) Advise()
        {
            IFaultBackendFactory factory = _catalog.GetFaultBackend("userfaultfd");
            PluginAvailability availability = factory.Probe();
            if (!availability.IsUsable)
            {
                Assert.Inconclusive("userfaultfd is not usable here: " + availability.Reason);
            }

            _postcopy = new PostcopyRam(_ram, factory.Open());
            if (_postcopy.SharedRamUnavailableReason is { } reason)
            {
                Assert.Inconclusive("shared guest RAM cannot be mapped with minor faults here: " + reason);
            }

            Assert.IsTrue(_postcopy.MapsShared(Block));
            _postcopy.PrepareAtAdvise();
            return (_postcopy, Block);
        }

        /// <summary>ADVISE, then LISTEN (armed).</summary>
        public (PostcopyRam Postcopy, RamBlock Block) Listen()
        {
            (PostcopyRam postcopy, RamBlock block) = Advise();
            postcopy.Arm();
            return (postcopy, block);
        }

        public void Dispose()
        {
            _postcopy?.Dispose(); // disarms: a reader still blocked is woken before the RAM goes
            _ram.Dispose();
            _catalog.Dispose();
        }
    }
}
