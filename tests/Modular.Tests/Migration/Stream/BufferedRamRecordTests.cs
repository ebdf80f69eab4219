using System.Buffers;
using System.Buffers.Binary;
using Modular.Core.Migration.Stream;
using static Modular.Tests.Migration.Stream.StreamTestPipes;

namespace Modular.Tests.Migration.Stream;

/// <summary>
/// The reader's synchronous RAM fast path (<see cref="MigrationStreamReader.TryReadBufferedRamRecord"/>):
/// it takes whole buffered PAGE and ZERO records, and leaves everything else, untouched, to the async reads.
/// </summary>
[TestClass]
public sealed class BufferedRamRecordTests
{
    private const int Page = StreamFormat.TargetPageSize;

    [TestMethod]
    public async Task ManyRecordsInOneRead_AreAllTakenWithoutAnotherRead()
    {
        (byte[] bytes, List<Expected> expected) = MixedRecords(40);
        var pipe = new ChunkedPipeReader(bytes, chunk: bytes.Length, segment: bytes.Length);
        var reader = new MigrationStreamReader(pipe);

        // The first record comes the slow way (the reader holds nothing yet); it fetches everything.
        var read = new List<Expected> { await ReadSlowAsync(reader) };
        while (reader.TryReadBufferedRamRecord(out RamRecordHeader header, out ReadOnlySequence<byte> page))
        {
            read.Add(new Expected(header, page.ToArray()));
        }

        Assert.AreEqual(1, pipe.Reads, "every record after the first came out of the first read");
        AssertSame(expected, read);
        Assert.AreEqual(bytes.Length - 8, reader.Position, "the fast path stops before EOS");
        Assert.AreEqual(RamRecordFlags.Eos, (await reader.ReadRamRecordHeaderAsync()).Kind);
    }

    [TestMethod]
    public async Task RecordsSplitAcrossReadsAndSegments_ReadTheSameAsTheSlowPath()
    {
        (byte[] bytes, List<Expected> expected) = MixedRecords(30);
        int[] chunks = [1, 5, 8, 9, 100, Page - 1, Page, Page + 1, Page + 8, Page + 20, 3 * Page + 7, 1 << 20];
        int[] segments = [7, Page - 3, Page + 9, 1 << 20];
        foreach (int chunk in chunks)
        {
            foreach (int segment in segments)
            {
                var pipe = new ChunkedPipeReader(bytes, chunk, segment);
                var reader = new MigrationStreamReader(pipe);
                var read = new List<Expected>();
                int fast = 0;
                while (read.Count < expected.Count)
                {
                    // As RamLoader does: drain what is buffered, then one record the slow way.
                    while (read.Count < expected.Count && reader.TryReadBufferedRamRecord(out RamRecordHeader header, out ReadOnlySequence<byte> page))
                    {
                        Assert.AreEqual(reader.Position - (header.Kind == RamRecordFlags.Page ? Page : 1) - HeaderLength(header), reader.RecordStart, $"chunk {chunk}, segment {segment}");
                        read.Add(new Expected(header, page.ToArray()));
                        fast++;
                    }

                    if (read.Count < expected.Count)
                    {
                        read.Add(await ReadSlowAsync(reader));
                    }
                }

                AssertSame(expected, read, $"chunk {chunk}, segment {segment}");
                Assert.AreEqual(RamRecordFlags.Eos, (await reader.ReadRamRecordHeaderAsync()).Kind, $"chunk {chunk}, segment {segment}");
                Assert.IsTrue(await reader.IsAtEndAsync());
                if (chunk >= 2 * (Page + 20))
                {
                    Assert.IsGreaterThan(0, fast, $"chunk {chunk}, segment {segment}: the fast path took nothing");
                }
            }
        }
    }

    [TestMethod]
    public async Task PageRunsThenSingleRecordsThenTheSlowPath_ReadTheSameAsTheSlowPathAlone()
    {
        (byte[] bytes, List<Expected> expected) = MixedRecords(60, runs: true);
        int[] chunks = [9, Page + 8, 3 * (Page + 8) + 5, 1 << 20];
        int[] segments = [Page - 3, 2 * (Page + 8), 5 * (Page + 8) + 1, 1 << 20];
        foreach (int chunk in chunks)
        {
            foreach (int segment in segments)
            {
                var reader = new MigrationStreamReader(new ChunkedPipeReader(bytes, chunk, segment));
                var read = new List<Expected>();
                int inRuns = 0;
                while (read.Count < expected.Count)
                {
                    // As RamLoader does in precopy: runs first, then single records, then one the slow way.
                    while (read.Count < expected.Count)
                    {
                        long before = reader.Position;
                        ReadOnlySpan<byte> run = reader.TryReadBufferedPageRun(out string blockId, out long runStart);
                        if (!run.IsEmpty)
                        {
                            Assert.AreEqual(before, runStart, $"chunk {chunk}, segment {segment}");
                            Assert.AreEqual(0, run.Length % MigrationStreamReader.ContinuedPageRecordLength);
                            Assert.AreEqual(before + run.Length, reader.Position, "the run is consumed");
                            for (int at = 0; at < run.Length; at += MigrationStreamReader.ContinuedPageRecordLength)
                            {
                                ulong word = BinaryPrimitives.ReadUInt64BigEndian(run[at..]);
                                var flags = (RamRecordFlags)(word & RamRecordHeader.FlagMask);
                                read.Add(new Expected(new RamRecordHeader(flags, word & ~RamRecordHeader.FlagMask, blockId), run.Slice(at + 8, Page).ToArray()));
                                inRuns++;
                            }

                            continue;
                        }

                        Assert.AreEqual(before, reader.Position, "an empty run consumes nothing");
                        if (!reader.TryReadBufferedRamRecord(out RamRecordHeader header, out ReadOnlySequence<byte> page))
                        {
                            break;
                        }

                        read.Add(new Expected(header, page.ToArray()));
                    }

                    if (read.Count < expected.Count)
                    {
                        read.Add(await ReadSlowAsync(reader));
                    }
                }

                AssertSame(expected, read, $"chunk {chunk}, segment {segment}");
                Assert.AreEqual(RamRecordFlags.Eos, (await reader.ReadRamRecordHeaderAsync()).Kind, $"chunk {chunk}, segment {segment}");
                if (chunk >= 3 * (Page + 8) && segment >= 2 * (Page + 8))
                {
                    Assert.IsGreaterThan(0, inRuns, $"chunk {chunk}, segment {segment}: no page came in a run");
                }
            }
        }
    }

    [TestMethod]
    public async Task ZeroWithNonZeroFillByte_IsLeftToTheSlowPathWhichNamesIt()
    {
        byte[] bytes = Write(w =>
        {
            w.WriteRamZeroPage("pc.ram", 0x1000);
            w.WriteRamZeroPage("pc.ram", 0x2000);
            w.WriteRamEos();
        });
        int second = 8 + 1 + 6 + 1;
        bytes[second + 8] = 0x5a;
        MigrationStreamReader reader = Reader(bytes);
        Assert.AreEqual(RamRecordFlags.Zero, (await reader.ReadRamRecordHeaderAsync()).Kind);
        await reader.ReadRamZeroFillAsync();
        Assert.IsFalse(reader.TryReadBufferedRamRecord(out _, out _));
        Assert.AreEqual(second, reader.Position, "nothing consumed");
        Assert.AreEqual(new RamRecordHeader(RamRecordFlags.Zero | RamRecordFlags.Continue, 0x2000, "pc.ram"), await reader.ReadRamRecordHeaderAsync());
        var ex = await Assert.ThrowsExactlyAsync<MigrationStreamException>(async () => await reader.ReadRamZeroFillAsync());
        Assert.AreEqual($"Migration stream error at byte {second + 8}: ram record: ZERO page with fill byte 0x5a; only 0 is valid.", ex.Message);
    }

    [TestMethod]
    public async Task ContinueBeforeAnyBlockAndUnsupportedFlags_AreLeftToTheSlowPath()
    {
        byte[] continueFirst = new byte[8 + Page];
        BinaryPrimitives.WriteUInt64BigEndian(continueFirst, 0x3000 | (ulong)(RamRecordFlags.Page | RamRecordFlags.Continue));
        MigrationStreamReader reader = Reader(continueFirst);
        await reader.PeekU8Async("first byte");
        Assert.IsFalse(reader.TryReadBufferedRamRecord(out _, out _));
        Assert.AreEqual(0, reader.Position);
        var ex = await Assert.ThrowsExactlyAsync<MigrationStreamException>(async () => await reader.ReadRamRecordHeaderAsync());
        StringAssert.Contains(ex.Message, "CONTINUE but no RAM block was named before on this stream");

        byte[] compressed = new byte[8 + 1 + 6 + Page];
        BinaryPrimitives.WriteUInt64BigEndian(compressed, 0x3000 | (ulong)RamRecordFlags.Page | (ulong)RamRecordFlags.CompressPage);
        reader = Reader(compressed);
        await reader.PeekU8Async("first byte");
        Assert.IsFalse(reader.TryReadBufferedRamRecord(out _, out _));
        ex = await Assert.ThrowsExactlyAsync<MigrationStreamException>(async () => await reader.ReadRamRecordHeaderAsync());
        StringAssert.Contains(ex.Message, "include unsupported 0x100");
    }

    [TestMethod]
    public void WriteRamPageOrZero_WritesOnePageRecordOrAZeroRecord()
    {
        byte[] page = new byte[Page];
        page[Page - 1] = 7;
        byte[] written = Write(w =>
        {
            Assert.IsFalse(w.WriteRamPageOrZero("pc.ram", 0x1000, page, static (p, _, d) => p.CopyTo(d)));
            Assert.IsTrue(w.WriteRamPageOrZero("pc.ram", 0x2000, page, static (_, _, d) => d.Clear()));
            Assert.IsTrue(w.WriteRamPageOrZero("vga.vram", 0, page, static (_, _, d) => d.Clear()));
            Assert.IsFalse(w.WriteRamPageOrZero("vga.vram", 0x1000, page, static (p, _, d) => p.CopyTo(d)));
        });
        byte[] expected = Write(w =>
        {
            w.WriteRamPage("pc.ram", 0x1000, page);
            w.WriteRamZeroPage("pc.ram", 0x2000);
            w.WriteRamZeroPage("vga.vram", 0);
            w.WriteRamPage("vga.vram", 0x1000, page);
        });
        CollectionAssert.AreEqual(expected, written);
    }

    private sealed record Expected(RamRecordHeader Header, byte[] Page);

    // Pages with distinct contents, zero pages, and block changes (with and without CONTINUE), then EOS.
    private static (byte[] Bytes, List<Expected> Records) MixedRecords(int count, bool runs = false)
    {
        var random = new Random(count);
        var records = new List<Expected>();
        byte[] bytes = Write(w =>
        {
            for (int i = 0; i < count; i++)
            {
                // With runs: stretches of pages in one block (the usual precopy stream), between them
                // a block change and a zero page.
                string block = runs ? (i / 10 % 3 == 2 ? "vga.vram" : "pc.ram") : i % 7 < 5 ? "pc.ram" : "vga.vram";
                ulong offset = (ulong)i * Page;
                bool zero = runs ? i % 10 == 9 : i % 4 == 3;
                if (zero)
                {
                    bool continues = records.Count > 0 && records[^1].Header.BlockId == block;
                    w.WriteRamZeroPage(block, offset);
                    records.Add(new Expected(new RamRecordHeader(RamRecordFlags.Zero | (continues ? RamRecordFlags.Continue : 0), offset, block), []));
                }
                else
                {
                    byte[] page = new byte[Page];
                    random.NextBytes(page);
                    bool continues = records.Count > 0 && records[^1].Header.BlockId == block;
                    w.WriteRamPage(block, offset, page);
                    records.Add(new Expected(new RamRecordHeader(RamRecordFlags.Page | (continues ? RamRecordFlags.Continue : 0), offset, block), page));
                }
            }

            w.WriteRamEos();
        });
        return (bytes, records);
    }

    private static async Task<Expected> ReadSlowAsync(MigrationStreamReader reader)
    {
        RamRecordHeader header = await reader.ReadRamRecordHeaderAsync();
        if (header.Kind == RamRecordFlags.Zero)
        {
            await reader.ReadRamZeroFillAsync();
            return new Expected(header, []);
        }

        return new Expected(header, (await reader.ReadRamPageAsync()).ToArray());
    }

    private static int HeaderLength(RamRecordHeader header) =>
        (header.Flags & RamRecordFlags.Continue) != 0 ? 8 : 8 + 1 + header.BlockId!.Length;

    private static void AssertSame(List<Expected> expected, List<Expected> read, string context = "")
    {
        Assert.HasCount(expected.Count, read, context);
        for (int i = 0; i < expected.Count; i++)
        {
            Assert.AreEqual(expected[i].Header, read[i].Header, $"{context} record {i}");
            CollectionAssert.AreEqual(expected[i].Page, read[i].Page, $"{context} record {i}");
        }
    }
}
