using System.Buffers;
using Modular.Core.Migration.Stream;
using static Modular.Tests.Migration.Stream.StreamTestPipes;

namespace Modular.Tests.Migration.Stream;

[TestClass]
public sealed class RoundTripTests
{
    private static readonly int[] Chunks = [int.MaxValue, 1, 3];

    private static async Task ForEachChunking(byte[] bytes, Func<MigrationStreamReader, Task> read)
    {
        foreach (int chunk in Chunks)
        {
            MigrationStreamReader reader = Reader(bytes, chunk);
            await read(reader);
            Assert.IsTrue(await reader.IsAtEndAsync(), $"all {bytes.Length} bytes consumed (chunk {chunk})");
            Assert.AreEqual(bytes.Length, reader.Position);
        }
    }

    [TestMethod]
    public async Task HeaderIsQevmVersion3()
    {
        byte[] bytes = Write(w => StreamHeader.Current.WriteTo(w));
        CollectionAssert.AreEqual(new byte[] { 0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 3 }, bytes);
        await ForEachChunking(bytes, async r => Assert.AreEqual(StreamHeader.Current, await StreamHeader.ReadFromAsync(r)));
    }

    [TestMethod]
    public async Task ConfigurationBytesAndRoundTrip()
    {
        byte[] bytes = Write(w => new ConfigurationSection("pc-i440fx-9.0").WriteTo(w));
        byte[] expected = [0x07, 0, 0, 0, 13, .. "pc-i440fx-9.0"u8];
        CollectionAssert.AreEqual(expected, bytes);
        await ForEachChunking(bytes, async r =>
        {
            Assert.AreEqual(SectionType.Configuration, await r.ReadSectionTypeAsync());
            ConfigurationSection c = await ConfigurationSection.ReadFromAsync(r);
            Assert.AreEqual("pc-i440fx-9.0", c.MachineType);
            Assert.IsNull(c.TargetPageBits);
            Assert.IsNull(c.Capabilities);
        });
    }

    [TestMethod]
    public async Task ConfigurationWithSubsections()
    {
        var config = new ConfigurationSection("modular-1", 12, ["x-ignore-shared"]);
        byte[] bytes = Write(config.WriteTo);
        await ForEachChunking(bytes, async r =>
        {
            await r.ReadSectionTypeAsync();
            ConfigurationSection c = await ConfigurationSection.ReadFromAsync(r);
            Assert.AreEqual(12u, c.TargetPageBits);
            CollectionAssert.AreEqual(new[] { "x-ignore-shared" }, c.Capabilities!.ToArray());
        });
    }

    [TestMethod]
    public async Task SectionStartFullPartEndAndFooter()
    {
        SectionHeader[] headers =
        [
            SectionHeader.Start(2, "ram", 0, 4),
            SectionHeader.Full(7, "serial", 1, 3),
            SectionHeader.Part(2),
            SectionHeader.End(2),
        ];
        byte[] start = Write(w => headers[0].WriteTo(w));
        CollectionAssert.AreEqual(new byte[] { 0x01, 0, 0, 0, 2, 3, (byte)'r', (byte)'a', (byte)'m', 0, 0, 0, 0, 0, 0, 0, 4 }, start);
        CollectionAssert.AreEqual(new byte[] { 0x03, 0, 0, 0, 2 }, Write(w => headers[3].WriteTo(w)));
        CollectionAssert.AreEqual(new byte[] { 0x7e, 0, 0, 0, 9 }, Write(w => new SectionFooter(9).WriteTo(w)));

        byte[] bytes = Write(w =>
        {
            foreach (SectionHeader h in headers)
            {
                h.WriteTo(w);
                new SectionFooter(h.SectionId).WriteTo(w);
            }
        });
        await ForEachChunking(bytes, async r =>
        {
            foreach (SectionHeader h in headers)
            {
                SectionType type = await r.ReadSectionTypeAsync();
                Assert.AreEqual(h, await SectionHeader.ReadFromAsync(r, type));
                Assert.AreEqual(new SectionFooter(h.SectionId), await SectionFooter.ReadFromAsync(r, h.SectionId, h.IdString ?? "ram"));
            }
        });
    }

    [TestMethod]
    public async Task Subsection()
    {
        byte[] bytes = Write(w => new SubsectionHeader("serial/fifo", 2).WriteTo(w));
        CollectionAssert.AreEqual((byte[])[0x05, 11, .. "serial/fifo"u8, 0, 0, 0, 2], bytes);
        await ForEachChunking(bytes, async r =>
        {
            Assert.AreEqual(SectionType.Subsection, await r.ReadSectionTypeAsync());
            Assert.AreEqual(new SubsectionHeader("serial/fifo", 2), await SubsectionHeader.ReadFromAsync(r));
        });
    }

    [TestMethod]
    public async Task EofAndVmDescription()
    {
        const string json = "{\"page_size\":4096,\"devices\":[]}";
        byte[] bytes = Write(w => { w.WriteEof(); new VmDescription(json).WriteTo(w); });
        Assert.AreEqual(0, bytes[0]);
        Assert.AreEqual(0x06, bytes[1]);
        Assert.AreEqual(json.Length, bytes[5]);
        await ForEachChunking(bytes, async r =>
        {
            Assert.AreEqual(SectionType.Eof, await r.ReadSectionTypeAsync());
            Assert.AreEqual(SectionType.VmDescription, await r.ReadSectionTypeAsync());
            Assert.AreEqual(json, (await VmDescription.ReadFromAsync(r)).Json);
        });
    }

    public static IEnumerable<object[]> Commands =>
    [
        [new OpenReturnPathCommand(), new byte[] { 8, 0, 1, 0, 0 }],
        [new PingCommand(0x01020304), new byte[] { 8, 0, 2, 0, 4, 1, 2, 3, 4 }],
        [new PostcopyAdviseCommand(4096, 4096), new byte[] { 8, 0, 3, 0, 16, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0x10, 0 }],
        [new PostcopyListenCommand(), new byte[] { 8, 0, 4, 0, 0 }],
        [new PostcopyRunCommand(), new byte[] { 8, 0, 5, 0, 0 }],
        [new PackagedCommand(0x100), new byte[] { 8, 0, 7, 0, 4, 0, 0, 1, 0 }],
        [new PostcopyResumeCommand(), new byte[] { 8, 0, 9, 0, 0 }],
        [new RecvBitmapCommand("pc.ram"), (byte[])[8, 0, 10, 0, 7, 6, .. "pc.ram"u8]],
        [new SwitchoverStartCommand(), new byte[] { 8, 0, 11, 0, 0 }],
    ];

    [TestMethod]
    [DynamicData(nameof(Commands))]
    public async Task CommandBytesAndRoundTrip(StreamCommand command, byte[] expected)
    {
        byte[] bytes = Write(command.WriteTo);
        CollectionAssert.AreEqual(expected, bytes);
        await ForEachChunking(bytes, async r =>
        {
            Assert.AreEqual(SectionType.Command, await r.ReadSectionTypeAsync());
            Assert.AreEqual(command, await StreamCommand.ReadFromAsync(r));
        });
    }

    [TestMethod]
    public async Task RamDiscardHasVersionIdTerminatorAndPairs()
    {
        var discard = new PostcopyRamDiscardCommand("pc.ram", [(0x1000, 0x2000), (0x10000, 0x1000)]);
        byte[] bytes = Write(discard.WriteTo);
        byte[] expected =
        [
            8, 0, 6, 0, 3 + 6 + 32, 0, 6, .. "pc.ram"u8, 0,
            0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0x20, 0,
            0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0,
        ];
        CollectionAssert.AreEqual(expected, bytes);
        await ForEachChunking(bytes, async r =>
        {
            await r.ReadSectionTypeAsync();
            var read = (PostcopyRamDiscardCommand)await StreamCommand.ReadFromAsync(r);
            Assert.AreEqual("pc.ram", read.BlockId);
            CollectionAssert.AreEqual(discard.Ranges.ToArray(), read.Ranges.ToArray());
        });
    }

    [TestMethod]
    public async Task PackagedCarriesANestedStream()
    {
        byte[] inner = Write(w => { new PostcopyListenCommand().WriteTo(w); SectionHeader.Full(3, "serial", 0, 1).WriteTo(w); w.WriteBe32(42); new SectionFooter(3).WriteTo(w); new PostcopyRunCommand().WriteTo(w); });
        byte[] bytes = Write(w => PackagedCommand.WriteWithPackage(w, inner));
        await ForEachChunking(bytes, async r =>
        {
            await r.ReadSectionTypeAsync();
            var packaged = (PackagedCommand)await StreamCommand.ReadFromAsync(r);
            (byte[] package, long offset) = await packaged.ReadPackageAsync(r);
            CollectionAssert.AreEqual(inner, package);
            Assert.AreEqual(9, offset);
        });
    }

    public static IEnumerable<object[]> ReturnPathMessages =>
    [
        [ReturnPathMessage.Shut(1), new byte[] { 0, 1, 0, 4, 0, 0, 0, 1 }],
        [ReturnPathMessage.Pong(7), new byte[] { 0, 2, 0, 4, 0, 0, 0, 7 }],
        [ReturnPathMessage.ReqPagesId(0x3000, 0x1000, "pc.ram"), (byte[])[0, 3, 0, 19, 0, 0, 0, 0, 0, 0, 0x30, 0, 0, 0, 0x10, 0, 6, .. "pc.ram"u8]],
        [ReturnPathMessage.ReqPages(0x5000, 0x1000), new byte[] { 0, 4, 0, 12, 0, 0, 0, 0, 0, 0, 0x50, 0, 0, 0, 0x10, 0 }],
        [ReturnPathMessage.RecvBitmap("pc.ram"), (byte[])[0, 5, 0, 7, 6, .. "pc.ram"u8]],
        [ReturnPathMessage.ResumeAck(), new byte[] { 0, 6, 0, 4, 0, 0, 0, 1 }],
        [ReturnPathMessage.SwitchoverAck(), new byte[] { 0, 7, 0, 0 }],
    ];

    [TestMethod]
    [DynamicData(nameof(ReturnPathMessages))]
    public async Task ReturnPathBytesAndRoundTrip(ReturnPathMessage message, byte[] expected)
    {
        byte[] bytes = Write(message.WriteTo);
        CollectionAssert.AreEqual(expected, bytes);
        await ForEachChunking(bytes, async r => Assert.AreEqual(message, await ReturnPathMessage.ReadFromAsync(r)));
    }

    [TestMethod]
    public async Task ReqPagesIdReusesTheBlockIdString()
    {
        byte[] bytes = Write(w => { ReturnPathMessage.ReqPagesId(0, 4096, "pc.ram").WriteTo(w); ReturnPathMessage.ReqPagesId(4096, 4096, "pc.ram").WriteTo(w); });
        MigrationStreamReader r = Reader(bytes);
        ReturnPathMessage a = await ReturnPathMessage.ReadFromAsync(r);
        ReturnPathMessage b = await ReturnPathMessage.ReadFromAsync(r);
        Assert.AreSame(a.BlockId, b.BlockId);
    }

    [TestMethod]
    public async Task ReceivedBitmapRoundTrip()
    {
        var bitmap = new ReceivedBitmap([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
        byte[] bytes = Write(bitmap.WriteTo);
        Assert.AreEqual(8 + 16 + 8, bytes.Length);
        CollectionAssert.AreEqual(new byte[] { 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef }, bytes[^8..]);
        await ForEachChunking(bytes, async r => CollectionAssert.AreEqual(bitmap.Bitmap, (await ReceivedBitmap.ReadFromAsync(r)).Bitmap));
    }

    [TestMethod]
    public async Task RamMemSizeBlockList()
    {
        var list = new RamBlockList([new RamBlockEntry("pc.ram", 0x800_0000), new RamBlockEntry("vga.vram", 0x100_0000, 0x20_0000)]);
        byte[] bytes = Write(w => { list.WriteTo(w); w.WriteRamEos(); });
        CollectionAssert.AreEqual(new byte[] { 0, 0, 0, 0, 0x09, 0, 0, 0x04 }, bytes[..8]);
        CollectionAssert.AreEqual(new byte[] { 0, 0, 0, 0, 0, 0, 0, 0x10 }, bytes[^8..]);
        await ForEachChunking(bytes, async r =>
        {
            RamRecordHeader h = await r.ReadRamRecordHeaderAsync();
            Assert.AreEqual(RamRecordFlags.MemSize, h.Kind);
            Assert.AreEqual(0x900_0000UL, h.Offset);
            RamBlockList read = await RamBlockList.ReadFromAsync(r, h.Offset, id => id == "vga.vram");
            CollectionAssert.AreEqual(list.Blocks.ToArray(), read.Blocks.ToArray());
            Assert.AreEqual(RamRecordFlags.Eos, (await r.ReadRamRecordHeaderAsync()).Kind);
        });
    }

    [TestMethod]
    public async Task RamPagesZeroPagesAndContinue()
    {
        byte[] page = Enumerable.Range(0, 4096).Select(i => (byte)(i * 7)).ToArray();
        byte[] bytes = Write(w =>
        {
            SectionHeader.Part(2).WriteTo(w);
            w.WriteRamPage("pc.ram", 0x1000, page);
            w.WriteRamZeroPage("pc.ram", 0x2000);
            w.WriteRamZeroPage("vga.vram", 0);
            w.WriteRamEos();
        });
        // PART(5) + be64 + idstr(7) + page + be64|CONTINUE + fill + be64 + idstr(9) + fill + EOS
        Assert.AreEqual(5 + 8 + 7 + 4096 + 8 + 1 + 8 + 9 + 1 + 8, bytes.Length);
        CollectionAssert.AreEqual(new byte[] { 0, 0, 0, 0, 0, 0, 0x10, 0x08, 6 }, bytes[5..14]);
        CollectionAssert.AreEqual(new byte[] { 0, 0, 0, 0, 0, 0, 0x20, 0x22, 0 }, bytes[(5 + 8 + 7 + 4096)..(5 + 8 + 7 + 4096 + 9)]);
        await ForEachChunking(bytes, async r =>
        {
            await SectionHeader.ReadFromAsync(r, await r.ReadSectionTypeAsync());
            RamRecordHeader h = await r.ReadRamRecordHeaderAsync();
            Assert.AreEqual(new RamRecordHeader(RamRecordFlags.Page, 0x1000, "pc.ram"), h);
            CollectionAssert.AreEqual(page, (await r.ReadRamPageAsync()).ToArray());
            Assert.AreEqual(new RamRecordHeader(RamRecordFlags.Zero | RamRecordFlags.Continue, 0x2000, "pc.ram"), await r.ReadRamRecordHeaderAsync());
            await r.ReadRamZeroFillAsync();
            Assert.AreEqual(new RamRecordHeader(RamRecordFlags.Zero, 0, "vga.vram"), await r.ReadRamRecordHeaderAsync());
            await r.ReadRamZeroFillAsync();
            Assert.AreEqual(RamRecordFlags.Eos, (await r.ReadRamRecordHeaderAsync()).Flags);
        });
    }
}
