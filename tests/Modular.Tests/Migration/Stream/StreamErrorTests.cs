using Modular.Core.Migration.Stream;
using static Modular.Tests.Migration.Stream.StreamTestPipes;

namespace Modular.Tests.Migration.Stream;

[TestClass]
public sealed class StreamErrorTests
{
    [TestMethod]
    public async Task WrongMagicNamesOffsetAndRecord()
    {
        var ex = await Assert.ThrowsExactlyAsync<MigrationStreamException>(async () => await StreamHeader.ReadFromAsync(Reader([0x12, 0x34, 0x56, 0x78, 0, 0, 0, 3])));
        Assert.AreEqual("Migration stream error at byte 0: stream header: magic is 0x12345678, not 0x5145564d (\"QEVM\"): this is not a QEMU/Modular migration stream.", ex.Message);
    }

    [TestMethod]
    public async Task WrongVersion()
    {
        var ex = await Assert.ThrowsExactlyAsync<MigrationStreamException>(async () => await StreamHeader.ReadFromAsync(Reader([0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 4])));
        Assert.AreEqual("Migration stream error at byte 4: stream header: unsupported stream version 4; only version 3 is supported.", ex.Message);
        ex = await Assert.ThrowsExactlyAsync<MigrationStreamException>(async () => await StreamHeader.ReadFromAsync(Reader([0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 2])));
        Assert.AreEqual("Migration stream error at byte 4: stream header: version 2 is QEMU's obsolete savevm format; only version 3 is supported.", ex.Message);
    }

    [TestMethod]
    public async Task TruncatedSectionStartNamesFieldOffsetAndRecord()
    {
        byte[] bytes = Write(w => { StreamHeader.Current.WriteTo(w); SectionHeader.Start(0, "ram", 0, 4).WriteTo(w); });
        byte[] cut = bytes[..(8 + 1 + 4 + 1 + 2)]; // inside the id string "ram"
        MigrationStreamReader r = Reader(cut);
        await StreamHeader.ReadFromAsync(r);
        var ex = await Assert.ThrowsExactlyAsync<MigrationStreamException>(async () => await SectionHeader.ReadFromAsync(r, await r.ReadSectionTypeAsync()));
        Assert.AreEqual("Migration stream error at byte 14: section START: truncated: the stream ended inside id string (2 of 3 bytes present).", ex.Message);
        Assert.AreEqual(14, ex.Offset);
        Assert.AreEqual("section START", ex.Record);
    }

    [TestMethod]
    public async Task TruncatedPageNamesRamRecord()
    {
        byte[] bytes = Write(w => w.WriteRamPage("pc.ram", 0x4000, new byte[4096]));
        MigrationStreamReader r = Reader(bytes[..100], chunk: 7);
        await r.ReadRamRecordHeaderAsync();
        var ex = await Assert.ThrowsExactlyAsync<MigrationStreamException>(async () => await r.ReadRamPageAsync());
        Assert.AreEqual("Migration stream error at byte 15: ram record: truncated: the stream ended inside page data (85 of 4096 bytes present).", ex.Message);
    }

    /// <summary>A stream with one of every forward record, cut at every offset: each cut fails with an offset inside the record being read.</summary>
    [TestMethod]
    public async Task EveryTruncationFailsWithOffsetAndRecord()
    {
        byte[] bytes = SampleStream();
        await SampleWalker.WalkAsync(Reader(bytes));
        for (int cut = 0; cut < bytes.Length; cut++)
        {
            MigrationStreamReader r = Reader(bytes[..cut], chunk: 5);
            var ex = await Assert.ThrowsExactlyAsync<MigrationStreamException>(async () => await SampleWalker.WalkAsync(r), $"cut at {cut}");
            StringAssert.Contains(ex.Message, "truncated", $"cut at {cut}: {ex.Message}");
            Assert.IsTrue(ex.Offset <= cut, $"cut at {cut}: offset {ex.Offset} is past the end: {ex.Message}");
            Assert.IsTrue(ex.Offset >= r.RecordStart, $"cut at {cut}: {ex.Message}");
            StringAssert.StartsWith(ex.Message, $"Migration stream error at byte {ex.Offset}: {ex.Record}: ");
            Assert.AreNotEqual(string.Empty, ex.Record);
        }
    }

    [TestMethod]
    public async Task PackagedLengthOverLimitIsRefusedBeforeAllocating()
    {
        byte[] bytes = [8, 0, 7, 0, 4, 0xff, 0xff, 0xff, 0xff];
        MigrationStreamReader r = Reader(bytes);
        await r.ReadSectionTypeAsync();
        var packaged = (PackagedCommand)await StreamCommand.ReadFromAsync(r);
        long before = GC.GetAllocatedBytesForCurrentThread();
        var ex = await Assert.ThrowsExactlyAsync<MigrationStreamException>(async () => await packaged.ReadPackageAsync(r));
        Assert.IsTrue(GC.GetAllocatedBytesForCurrentThread() - before < 1 << 20, "no large allocation");
        Assert.AreEqual("Migration stream error at byte 5: command PACKAGED: package length 4294967295 exceeds the limit of 268435456 bytes; the stream is corrupt or not from a compatible source.", ex.Message);
    }

    [TestMethod]
    public async Task VmDescriptionAndBitmapOverLimitAreRefused()
    {
        MigrationStreamReader r = Reader([6, 0x7f, 0xff, 0xff, 0xff], limits: new StreamLimits(MaxVmDescriptionLength: 1000));
        await r.ReadSectionTypeAsync();
        var ex = await Assert.ThrowsExactlyAsync<MigrationStreamException>(async () => await VmDescription.ReadFromAsync(r));
        Assert.AreEqual("Migration stream error at byte 1: VMDESCRIPTION: JSON length 2147483647 exceeds the limit of 1000 bytes; the stream is corrupt or not from a compatible source.", ex.Message);

        r = Reader([0xff, 0, 0, 0, 0, 0, 0, 0]);
        ex = await Assert.ThrowsExactlyAsync<MigrationStreamException>(async () => await ReceivedBitmap.ReadFromAsync(r));
        StringAssert.Contains(ex.Message, "received bitmap: bitmap length 18374686479671623680 exceeds the limit");

        r = Reader([7, 0, 1, 0, 0]);
        await r.ReadSectionTypeAsync();
        ex = await Assert.ThrowsExactlyAsync<MigrationStreamException>(async () => await ConfigurationSection.ReadFromAsync(r));
        StringAssert.Contains(ex.Message, "at byte 1: CONFIGURATION: machine type length 65536 exceeds the limit of 256 bytes");
    }

    [TestMethod]
    public async Task UnknownSectionTypeCommandAndMessage()
    {
        var ex = await Assert.ThrowsExactlyAsync<MigrationStreamException>(async () => await Reader([0x09]).ReadSectionTypeAsync());
        Assert.AreEqual("Migration stream error at byte 0: section type: unknown section type 0x09.", ex.Message);

        MigrationStreamReader r = Reader([8, 0, 0x20, 0, 0]);
        await r.ReadSectionTypeAsync();
        ex = await Assert.ThrowsExactlyAsync<MigrationStreamException>(async () => await StreamCommand.ReadFromAsync(r));
        Assert.AreEqual("Migration stream error at byte 0: command 0x0020: unknown command 0x0020 (length 0).", ex.Message);

        r = Reader([8, 0, 2, 0, 3, 1, 2, 3]);
        await r.ReadSectionTypeAsync();
        ex = await Assert.ThrowsExactlyAsync<MigrationStreamException>(async () => await StreamCommand.ReadFromAsync(r));
        Assert.AreEqual("Migration stream error at byte 3: command PING: payload length is 3, expected 4.", ex.Message);

        ex = await Assert.ThrowsExactlyAsync<MigrationStreamException>(async () => await ReturnPathMessage.ReadFromAsync(Reader([0, 4, 0, 13])));
        Assert.AreEqual("Migration stream error at byte 2: return-path REQ_PAGES: payload length is 13, expected 12.", ex.Message);
    }

    [TestMethod]
    public async Task FooterMismatchAndRamProblems()
    {
        var ex = await Assert.ThrowsExactlyAsync<MigrationStreamException>(async () => await SectionFooter.ReadFromAsync(Reader([0x7e, 0, 0, 0, 5]), 4, "serial"));
        Assert.AreEqual("Migration stream error at byte 0: section FOOTER: footer names section 5 but section 4 'serial' is open.", ex.Message);

        ex = await Assert.ThrowsExactlyAsync<MigrationStreamException>(async () => await Reader([0, 0, 0, 0, 0, 0, 0x10, 0x28]).ReadRamRecordHeaderAsync());
        Assert.AreEqual("Migration stream error at byte 0: ram record: CONTINUE but no RAM block was named before on this stream.", ex.Message);

        ex = await Assert.ThrowsExactlyAsync<MigrationStreamException>(async () => await Reader([0, 0, 0, 0, 0, 0, 0x11, 0x08]).ReadRamRecordHeaderAsync());
        StringAssert.Contains(ex.Message, "at byte 0: ram record: flags 0x108 include unsupported 0x100 (CompressPage)");

        MigrationStreamReader r = Reader([0, 0, 0, 0, 0, 0, 0x10, 0x02, 1, (byte)'a', 7]);
        await r.ReadRamRecordHeaderAsync();
        ex = await Assert.ThrowsExactlyAsync<MigrationStreamException>(async () => await r.ReadRamZeroFillAsync());
        Assert.AreEqual("Migration stream error at byte 10: ram record: ZERO page with fill byte 0x07; only 0 is valid.", ex.Message);
    }

    [TestMethod]
    public void EngineErrorsUseTheSameForm()
    {
        MigrationStreamReader r = Reader([]);
        r.BeginRecord("section START");
        Assert.AreEqual("Migration stream error at byte 0: section START: unknown section id 'foo'.", r.Error("unknown section id 'foo'").Message);
    }

    internal static byte[] SampleStream() => Write(w =>
    {
        StreamHeader.Current.WriteTo(w);
        new ConfigurationSection("modular-1").WriteTo(w);
        new OpenReturnPathCommand().WriteTo(w);
        new PostcopyAdviseCommand(4096, 4096).WriteTo(w);
        SectionHeader.Start(0, "ram", 0, 4).WriteTo(w);
        new RamBlockList([new RamBlockEntry("pc.ram", 0x10000)]).WriteTo(w);
        w.WriteRamEos();
        new SectionFooter(0).WriteTo(w);
        SectionHeader.Part(0).WriteTo(w);
        w.WriteRamPage("pc.ram", 0x1000, Enumerable.Repeat((byte)0xab, 4096).ToArray());
        w.WriteRamZeroPage("pc.ram", 0x2000);
        w.WriteRamEos();
        new SectionFooter(0).WriteTo(w);
        new PostcopyRamDiscardCommand("pc.ram", [(0x1000, 0x1000)]).WriteTo(w);
        new PingCommand(2).WriteTo(w);
        SectionHeader.End(0).WriteTo(w);
        w.WriteRamEos();
        new SectionFooter(0).WriteTo(w);
        SectionHeader.Full(1, "serial", 0, 1).WriteTo(w);
        w.WriteBe32(0xdeadbeef);
        new SubsectionHeader("serial/fifo", 1).WriteTo(w);
        w.WriteU8(5);
        new SectionFooter(1).WriteTo(w);
        w.WriteEof();
        new VmDescription("{\"page_size\":4096,\"devices\":[]}").WriteTo(w);
    });
}

/// <summary>A minimal loader for <see cref="StreamErrorTests.SampleStream"/>: knows "ram" and a 4-byte "serial" with one subsection.</summary>
internal static class SampleWalker
{
    public static async Task WalkAsync(MigrationStreamReader r)
    {
        await StreamHeader.ReadFromAsync(r);
        var names = new Dictionary<uint, string>();
        while (true)
        {
            SectionType type = await r.ReadSectionTypeAsync();
            switch (type)
            {
                case SectionType.Configuration:
                    await ConfigurationSection.ReadFromAsync(r);
                    break;
                case SectionType.Command:
                    StreamCommand c = await StreamCommand.ReadFromAsync(r);
                    if (c is PackagedCommand p)
                    {
                        await p.ReadPackageAsync(r);
                    }

                    break;
                case SectionType.Start or SectionType.Full or SectionType.Part or SectionType.End:
                    SectionHeader h = await SectionHeader.ReadFromAsync(r, type);
                    if (h.IdString is not null)
                    {
                        names[h.SectionId] = h.IdString;
                    }

                    string name = names.TryGetValue(h.SectionId, out string? n) ? n : throw r.Error($"unknown section id {h.SectionId}");
                    if (name == "ram")
                    {
                        await WalkRamAsync(r);
                    }
                    else
                    {
                        await r.ReadBe32Async("serial data");
                        if (await r.ReadU8Async("subsection marker") != (byte)SectionType.Subsection)
                        {
                            throw r.Error("subsection expected");
                        }

                        await SubsectionHeader.ReadFromAsync(r);
                        await r.ReadU8Async("fifo");
                    }

                    await SectionFooter.ReadFromAsync(r, h.SectionId, name);
                    break;
                case SectionType.Eof:
                    await r.ReadSectionTypeAsync();
                    await VmDescription.ReadFromAsync(r);
                    return;
                default:
                    throw r.Error($"unexpected {type}");
            }
        }
    }

    private static async Task WalkRamAsync(MigrationStreamReader r)
    {
        while (true)
        {
            RamRecordHeader h = await r.ReadRamRecordHeaderAsync();
            switch (h.Kind)
            {
                case RamRecordFlags.MemSize: await RamBlockList.ReadFromAsync(r, h.Offset); break;
                case RamRecordFlags.Page: await r.ReadRamPageAsync(); break;
                case RamRecordFlags.Zero: await r.ReadRamZeroFillAsync(); break;
                case RamRecordFlags.Eos: return;
            }
        }
    }
}
