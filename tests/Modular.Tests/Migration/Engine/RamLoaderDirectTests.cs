using CsCheck;
using Modular.Core.Memory;
using Modular.Core.Migration.Engine;
using Modular.Core.Migration.Stream;
using Modular.Tests.Migration.Stream;

namespace Modular.Tests.Migration.Engine;

/// <summary>
/// <see cref="RamLoader"/> receiving precopy pages straight into guest RAM (RamLoader.Direct.cs) from a
/// transport double that splits the stream at random places, both through its pipe and in the direct
/// receives: whatever the splits, what lands in RAM, the statistics and the stream position are those
/// of the pipe-only path; wrong guesses (ZERO records, skipped pages, EOS, a second pass) go back
/// through the pipe; and a truncated stream fails with the same error at the same offset.
/// </summary>
[TestClass]
public sealed class RamLoaderDirectTests
{
    private const int Page = RamBlock.TargetPageSize;
    private const int Pages = 700; // more than one direct receive's 511 records

    private static (byte[] Stream, byte[][] Expected, int Normal, int Zero) MakeStream(int seed, bool plainFirstPass = false)
    {
        var random = new Random(seed);
        byte[][] expected = new byte[Pages][];
        int normal = 0, zero = 0;
        byte[] stream = StreamTestPipes.Write(w =>
        {
            new RamBlockList([new RamBlockEntry(GuestRam.MainBlockName, (ulong)Pages * Page)]).WriteTo(w);
            // The first pass: every page in order, some as ZERO records, some (a run) sent later.
            var later = new List<int>();
            for (int i = 0; i < Pages; i++)
            {
                if (!plainFirstPass && (random.Next(40) == 0 || (i >= 300 && i < 310)))
                {
                    later.Add(i);
                    continue;
                }

                Send(i);
            }

            // Then what was put off, and a second pass over some pages (below everything loaded).
            foreach (int i in later)
            {
                Send(i);
            }

            for (int i = 0; i < Pages && !plainFirstPass; i += 1 + random.Next(30))
            {
                Send(i);
            }

            w.WriteRamEos();

            void Send(int i)
            {
                if (!plainFirstPass && random.Next(25) == 0)
                {
                    expected[i] = new byte[Page];
                    w.WriteRamZeroPage(GuestRam.MainBlockName, (ulong)i * Page);
                    zero++;
                }
                else
                {
                    expected[i] = new byte[Page];
                    random.NextBytes(expected[i]);
                    w.WriteRamPage(GuestRam.MainBlockName, (ulong)i * Page, expected[i]);
                    normal++;
                }
            }
        });
        return (stream, expected, normal, zero);
    }

    private static GuestRam JunkRam()
    {
        GuestRam ram = GuestRam.Create((ulong)Pages * Page);
        byte[] junk = new byte[Page];
        Array.Fill(junk, (byte)0xee);
        for (int i = 0; i < Pages; i++)
        {
            ram.Blocks[0].CopyIn((ulong)i * Page, junk); // what a ZERO record or a page must replace
        }

        return ram;
    }

    [TestMethod]
    public void RandomSplits_LandWhatWasSent()
    {
        long directPages = 0, misses = 0, givenBack = 0;
        (from seed in Gen.Int
         from maxChunk in Gen.OneOf(Gen.Int[1, 64], Gen.Int[1, 9000], Gen.Int[4000, 3_000_000])
         select (seed, maxChunk)).Sample(
            sample =>
            {
                (byte[] stream, byte[][] expected, int normal, int zero) = MakeStream(sample.seed);
                using GuestRam ram = JunkRam();
                var stats = new MigrationStats();
                var feed = new DirectReceiveFeed(stream, sample.seed, sample.maxChunk);
                var loader = new RamLoader(ram, stats) { Direct = feed };
                var reader = new MigrationStreamReader(feed.Reader);
                Task load = loader.LoadRecordsAsync(reader, isStart: true).AsTask();
                feed.Run();
                Assert.IsTrue(load.IsCompleted, "the loader ran inline in the feed's flushes and finished at EOS");
                load.GetAwaiter().GetResult();

                Assert.AreEqual(stream.Length, reader.Position, "the reader counted every byte, direct ones too");
                byte[] landed = new byte[Page];
                for (int i = 0; i < Pages; i++)
                {
                    ram.Blocks[0].CopyOut((ulong)i * Page, landed);
                    Assert.IsTrue(expected[i].AsSpan().SequenceEqual(landed), $"page {i} (seed {sample.seed}, chunks up to {sample.maxChunk})");
                }

                Assert.AreEqual(normal, stats.NormalPages, "PAGE records counted once each");
                Assert.AreEqual(zero, stats.DuplicatePages, "ZERO records counted once each");
                Interlocked.Add(ref directPages, loader.DirectPages);
                Interlocked.Add(ref misses, loader.DirectMisses);
                Interlocked.Add(ref givenBack, feed.GivenBack);
            },
            iter: 60,
            threads: 1);

        Assert.IsGreaterThan(0L, directPages, "pages went straight into RAM");
        Assert.IsGreaterThan(0L, misses, "wrong guesses were met (ZERO records, skipped pages, EOS)");
        Assert.IsGreaterThan(0L, givenBack, "bytes went back through the pipe");
    }

    [TestMethod]
    public void MostOfAFirstPassGoesStraightIntoRam()
    {
        (byte[] stream, _, int normal, _) = MakeStream(11, plainFirstPass: true);
        using GuestRam ram = JunkRam();
        var feed = new DirectReceiveFeed(stream, 11, 256 * 1024);
        var loader = new RamLoader(ram, new MigrationStats()) { Direct = feed };
        Task load = loader.LoadRecordsAsync(new MigrationStreamReader(feed.Reader), isStart: true).AsTask();
        feed.Run();
        load.GetAwaiter().GetResult();
        // Every page after the first receive of the pipe (at most 64 of them) can come directly.
        Assert.IsGreaterThanOrEqualTo(normal - 64, (int)loader.DirectPages, $"{loader.DirectPages} of {normal} pages came directly");
        Assert.AreEqual(0L, loader.DirectMisses, "no wrong guess: guesses stop at the block's end, so the EOS after the last page came through the pipe");
    }

    [TestMethod]
    public async Task ATruncatedStream_FailsAsThePipeOnlyPathDoes()
    {
        (byte[] full, _, _, _) = MakeStream(3);
        var random = new Random(3);
        for (int round = 0; round < 40; round++)
        {
            byte[] stream = full.AsSpan(0, random.Next(100, full.Length - 1)).ToArray();
            MigrationStreamException expected;
            using (GuestRam ram = JunkRam())
            {
                var loader = new RamLoader(ram, new MigrationStats());
                expected = await Assert.ThrowsExactlyAsync<MigrationStreamException>(async () =>
                    await loader.LoadRecordsAsync(new MigrationStreamReader(new ChunkedPipeReader(stream, 5000, 5000)), isStart: true));
            }

            using (GuestRam ram = JunkRam())
            {
                var feed = new DirectReceiveFeed(stream, round, 20_000);
                var loader = new RamLoader(ram, new MigrationStats()) { Direct = feed };
                Task load = loader.LoadRecordsAsync(new MigrationStreamReader(feed.Reader), isStart: true).AsTask();
                feed.Run();
                MigrationStreamException actual = await Assert.ThrowsExactlyAsync<MigrationStreamException>(() => load);
                Assert.AreEqual(expected.Message, actual.Message, $"cut at {stream.Length}");
            }
        }
    }
}
