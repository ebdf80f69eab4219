using Modular.Core.Memory;
using Modular.Core.Migration.Engine;
using Modular.Core.Migration.Stream;
using Modular.Tests.Migration.Stream;

namespace Modular.Tests.Migration.Engine;

/// <summary>
/// <see cref="RamLoader"/> over real guest RAM, with the stream delivered in reads and segments that split
/// records (and pages) at chosen places: what lands in RAM is what was sent, and bad records fail naming
/// the record's offset whether they came through the fast path or not.
/// </summary>
[TestClass]
public sealed class RamLoaderTests
{
    private const int Page = RamBlock.TargetPageSize;
    private const int Pages = 64;

    [TestMethod]
    public async Task LoadingPages_AllocatesNothingPerPage()
    {
        // Every page of a migration passes here: garbage per page (a closure once cost 9.6 MB per GiB)
        // means a GC, which stops the postcopy fault thread and listen thread mid-migration.
        const int pages = 4096;
        byte[] page = new byte[Page];
        Array.Fill(page, (byte)0x5a);
        byte[] stream = StreamTestPipes.Write(w =>
        {
            for (int i = 0; i < pages; i++)
            {
                w.WriteRamPage(GuestRam.MainBlockName, (ulong)i * Page, page);
            }

            w.WriteRamEos();
        });
        using GuestRam ram = GuestRam.Create((ulong)pages * Page);
        var loader = new RamLoader(ram, new MigrationStats());
        loader.TrustBlockList();
        await loader.LoadRecordsAsync(new MigrationStreamReader(new ChunkedPipeReader(stream, stream.Length, stream.Length)), isStart: false);

        var reader = new MigrationStreamReader(new ChunkedPipeReader(stream, stream.Length, stream.Length));
        long before = GC.GetAllocatedBytesForCurrentThread();
        ValueTask load = loader.LoadRecordsAsync(reader, isStart: false);
        Assert.IsTrue(load.IsCompletedSuccessfully, "a stream already in memory loads without waiting");
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        await load;

        Assert.IsTrue(allocated < 16 * 1024, $"loading {pages} pages allocated {allocated} bytes; per-page garbage is back");
        byte[] landed = new byte[Page];
        ram.Blocks[0].CopyOut((ulong)(pages - 1) * Page, landed);
        CollectionAssert.AreEqual(page, landed);
    }

    [TestMethod]
    public async Task PagesSplitAcrossReadsAndSegments_LandIntact()
    {
        var random = new Random(5);
        byte[][] pages = new byte[Pages][];
        for (int i = 0; i < Pages; i++)
        {
            pages[i] = new byte[Page];
            if (i % 5 != 4)
            {
                random.NextBytes(pages[i]);
            }
        }

        byte[] stream = StreamTestPipes.Write(w =>
        {
            new RamBlockList([new RamBlockEntry(GuestRam.MainBlockName, (ulong)Pages * Page)]).WriteTo(w);
            for (int i = 0; i < Pages; i++)
            {
                if (i % 5 == 4)
                {
                    w.WriteRamZeroPage(GuestRam.MainBlockName, (ulong)i * Page);
                }
                else
                {
                    w.WriteRamPage(GuestRam.MainBlockName, (ulong)i * Page, pages[i]);
                }
            }

            w.WriteRamEos();
        });

        foreach ((int chunk, int segment) in new[] { (stream.Length, stream.Length), (5000, 4100), (Page + 3, Page - 1), (64 * 1024, 64 * 1024), (777, 1 << 20) })
        {
            using GuestRam ram = GuestRam.Create((ulong)Pages * Page);
            RamBlock block = ram.Blocks[0];
            byte[] junk = new byte[Page];
            Array.Fill(junk, (byte)0xee);
            for (int i = 4; i < Pages; i += 5)
            {
                block.CopyIn((ulong)i * Page, junk); // a ZERO record must clear what was there
            }

            var stats = new MigrationStats();
            var loader = new RamLoader(ram, stats);
            var pipe = new ChunkedPipeReader(stream, chunk, segment);
            await loader.LoadRecordsAsync(new MigrationStreamReader(pipe), isStart: true);

            Assert.IsTrue(loader.SawMemSize);
            byte[] landed = new byte[Page];
            for (int i = 0; i < Pages; i++)
            {
                block.CopyOut((ulong)i * Page, landed);
                CollectionAssert.AreEqual(pages[i], landed, $"page {i} (chunk {chunk}, segment {segment})");
            }

            Assert.AreEqual(Pages - Pages / 5, stats.NormalPages, $"chunk {chunk}, segment {segment}");
            Assert.AreEqual(Pages / 5, stats.DuplicatePages, $"chunk {chunk}, segment {segment}");
        }
    }

    [TestMethod]
    public async Task UnknownBlockAmongBufferedPages_FailsAtThatRecord()
    {
        byte[] page = new byte[Page];
        page[0] = 1;
        long bad = 0;
        byte[] stream = StreamTestPipes.Write(w =>
        {
            new RamBlockList([new RamBlockEntry(GuestRam.MainBlockName, 16 * Page)]).WriteTo(w);
            w.WriteRamPage(GuestRam.MainBlockName, 0, page);
            w.WriteRamPage(GuestRam.MainBlockName, Page, page);
            bad = w.Position;
            w.WriteRamPage("nope", 2 * Page, page);
            w.WriteRamEos();
        });

        using GuestRam ram = GuestRam.Create(16 * Page);
        var loader = new RamLoader(ram, new MigrationStats());
        var pipe = new ChunkedPipeReader(stream, stream.Length, stream.Length);
        var ex = await Assert.ThrowsExactlyAsync<MigrationStreamException>(async () => await loader.LoadRecordsAsync(new MigrationStreamReader(pipe), isStart: true));
        Assert.AreEqual($"Migration stream error at byte {bad}: ram record: RAM block 'nope' does not exist on this machine (it has pc.ram).", ex.Message);
    }

    [TestMethod]
    public async Task PageOutsideTheBlockAmongBufferedPages_FailsAtThatRecord()
    {
        byte[] page = new byte[Page];
        long bad = 0;
        byte[] stream = StreamTestPipes.Write(w =>
        {
            new RamBlockList([new RamBlockEntry(GuestRam.MainBlockName, 16 * Page)]).WriteTo(w);
            w.WriteRamPage(GuestRam.MainBlockName, 0, page);
            bad = w.Position;
            w.WriteRamZeroPage(GuestRam.MainBlockName, 16 * Page);
            w.WriteRamEos();
        });

        using GuestRam ram = GuestRam.Create(16 * Page);
        var loader = new RamLoader(ram, new MigrationStats());
        var ex = await Assert.ThrowsExactlyAsync<MigrationStreamException>(async () =>
            await loader.LoadRecordsAsync(new MigrationStreamReader(new ChunkedPipeReader(stream, stream.Length, 100)), isStart: true));
        Assert.AreEqual($"Migration stream error at byte {bad}: ram record: page offset 0x10000 lies outside RAM block 'pc.ram' (0x10000 bytes).", ex.Message);
    }

    [TestMethod]
    public async Task PageOutsideTheBlockInsideARunOfPages_FailsAtThatRecord_AfterLoadingThePagesBeforeIt()
    {
        byte[] page = new byte[Page];
        page[0] = 0x42;
        long bad = 0;
        byte[] stream = StreamTestPipes.Write(w =>
        {
            new RamBlockList([new RamBlockEntry(GuestRam.MainBlockName, 16 * Page)]).WriteTo(w);
            for (int i = 0; i < 4; i++)
            {
                w.WriteRamPage(GuestRam.MainBlockName, (ulong)i * Page, page);
            }

            bad = w.Position;
            w.WriteRamPage(GuestRam.MainBlockName, 16 * Page, page); // continues the block, one page past its end
            w.WriteRamEos();
        });

        using GuestRam ram = GuestRam.Create(16 * Page);
        var stats = new MigrationStats();
        var loader = new RamLoader(ram, stats);
        var ex = await Assert.ThrowsExactlyAsync<MigrationStreamException>(async () =>
            await loader.LoadRecordsAsync(new MigrationStreamReader(new ChunkedPipeReader(stream, stream.Length, stream.Length)), isStart: true));
        Assert.AreEqual($"Migration stream error at byte {bad}: ram record: page offset 0x10000 lies outside RAM block 'pc.ram' (0x10000 bytes).", ex.Message);
        byte[] copy = new byte[1];
        for (int i = 0; i < 4; i++)
        {
            ram.Blocks[0].CopyOut((ulong)i * Page, copy);
            Assert.AreEqual(0x42, copy[0], $"page {i} before the bad record was loaded");
        }
    }
}
