using System.Buffers;
using System.IO.Pipelines;
using CsCheck;
using Modular.Core.Migration.Stream;

namespace Modular.Tests.Migration.Stream;

/// <summary>
/// QEMU's XBZRLE encoding: exact bytes for known differences, decode(encode) restores the page for
/// any old and new page (property), an unchanged page encodes to nothing, a difference that does not
/// fit says so, malformed encodings are refused without throwing, and the RAM record round-trips
/// with QEMU's checks on the encoding flag and the length.
/// </summary>
[TestClass]
public sealed class XbzrleTests
{
    private const int Page = 4096;

    [TestMethod]
    public void KnownDifferences_EncodeToQemusBytes()
    {
        byte[] old = new byte[Page];
        byte[] now = (byte[])old.Clone();
        now[0] = 1;
        now[200] = 2;
        now[201] = 3;
        byte[] encoded = new byte[Page];

        int length = Xbzrle.Encode(old, now, encoded);

        // zrun 0, nzrun 1 [01]; zrun 199 (two bytes: 0xc7 0x01), nzrun 2 [02 03]; the trailing zero run is left out.
        CollectionAssert.AreEqual(new byte[] { 0, 1, 1, 0xC7, 0x01, 2, 2, 3 }, encoded[..length]);
        Assert.AreEqual(0, Xbzrle.Encode(old, old, encoded), "an unchanged page encodes to nothing");
    }

    [TestMethod]
    public void AnyTwoPages_DecodeBackToTheNewOne()
    {
        Gen<(byte[] Old, byte[] New)> pages =
            from old in Gen.Byte.Array[Page]
            from changes in Gen.Select(Gen.Int[0, Page - 1], Gen.Int[1, 64], Gen.Byte).Array[0, 40]
            select (old, Apply(old, changes));

        pages.Sample(pair =>
        {
            byte[] encoded = new byte[Page];
            int length = Xbzrle.Encode(pair.Old, pair.New, encoded);
            if (length < 0)
            {
                return; // overflow: such a page goes whole
            }

            byte[] page = (byte[])pair.Old.Clone();
            Assert.IsGreaterThanOrEqualTo(0, Xbzrle.Decode(encoded.AsSpan(0, length), page));
            CollectionAssert.AreEqual(pair.New, page);
        }, iter: 500);
    }

    [TestMethod]
    public void ADifferenceThatDoesNotFit_IsAnOverflow()
    {
        byte[] old = new byte[Page];
        byte[] now = new byte[Page];
        for (int i = 0; i < Page; i += 2)
        {
            now[i] = 0xFF; // every other byte: far more than a page encoded
        }

        Assert.AreEqual(-1, Xbzrle.Encode(old, now, new byte[Page]));
        Assert.AreEqual(-1, Xbzrle.Encode(old, now, new byte[16]), "nor in a small buffer");
    }

    [TestMethod]
    [DataRow(new byte[] { 5 }, "one byte: no room for two lengths")]
    [DataRow(new byte[] { 0, 0 }, "an empty non-zero run")]
    [DataRow(new byte[] { 0, 3, 1 }, "a run past the data")]
    [DataRow(new byte[] { 0xFF, 0x7F, 1, 1 }, "a zero run past the page")]
    [DataRow(new byte[] { 0x80, 0x80, 1, 1 }, "a length over two bytes")]
    [DataRow(new byte[] { 0, 1, 9, 0, 1, 9 }, "an empty zero run after the first")]
    public void MalformedEncodings_AreRefused(byte[] encoded, string why)
    {
        Assert.AreEqual(-1, Xbzrle.Decode(encoded, new byte[Page]), why);
    }

    [TestMethod]
    public void RandomBytes_NeverThrowWhenDecoded()
    {
        Gen.Byte.Array[0, 64].Sample(bytes => _ = Xbzrle.Decode(bytes, new byte[Page]), iter: 2000);
    }

    [TestMethod]
    public async Task TheRamRecord_RoundTrips_AndItsChecksNameTheProblem()
    {
        byte[] encoded = [0, 1, 7];
        var pipe = new Pipe();
        var writer = new MigrationStreamWriter(pipe.Writer);
        writer.WriteRamXbzrlePage("pc.ram", 0x3000, encoded);
        writer.WriteRamXbzrlePage("pc.ram", 0x5000, encoded);
        await pipe.Writer.FlushAsync();
        await pipe.Writer.CompleteAsync();

        var reader = new MigrationStreamReader(pipe.Reader);
        RamRecordHeader first = await reader.ReadRamRecordHeaderAsync();
        Assert.AreEqual(RamRecordFlags.Xbzrle, first.Kind);
        Assert.AreEqual(0x3000UL, first.Offset);
        Assert.AreEqual("pc.ram", first.BlockId);
        CollectionAssert.AreEqual(encoded, (await reader.ReadRamXbzrleAsync()).ToArray());
        RamRecordHeader second = await reader.ReadRamRecordHeaderAsync();
        Assert.AreEqual(RamRecordFlags.Xbzrle | RamRecordFlags.Continue, second.Flags, "the same block: CONTINUE");
        CollectionAssert.AreEqual(encoded, (await reader.ReadRamXbzrleAsync()).ToArray());

        MigrationStreamException wrongFlag = await Assert.ThrowsExactlyAsync<MigrationStreamException>(async () => await Reader([0x02, 0, 1, 0]).ReadRamXbzrleAsync());
        StringAssert.Contains(wrongFlag.Message, "encoding flag 0x02, not 0x01");
        MigrationStreamException tooLong = await Assert.ThrowsExactlyAsync<MigrationStreamException>(async () => await Reader([0x01, 0x10, 0x01]).ReadRamXbzrleAsync());
        StringAssert.Contains(tooLong.Message, "XBZRLE page of 4097 bytes, more than a page");
    }

    private static MigrationStreamReader Reader(byte[] bytes) => new(PipeReader.Create(new ReadOnlySequence<byte>(bytes)));

    private static byte[] Apply(byte[] old, (int At, int Length, byte Value)[] changes)
    {
        byte[] page = (byte[])old.Clone();
        foreach ((int at, int length, byte value) in changes)
        {
            for (int i = at; i < Math.Min(Page, at + length); i++)
            {
                page[i] ^= (byte)(value | 1);
            }
        }

        return page;
    }
}
