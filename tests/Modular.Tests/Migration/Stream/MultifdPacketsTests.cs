using System.Buffers.Binary;
using Modular.Core.Migration.Stream;

namespace Modular.Tests.Migration.Stream;

/// <summary>
/// QEMU's multifd channel format: the initial message and the packet header round-trip with QEMU's
/// byte layout, and every malformed field is refused with its byte offset, the channel and what to do.
/// </summary>
[TestClass]
public sealed class MultifdPacketsTests
{
    private const string Channel = "tcp:127.0.0.1:4444 (raw channel 2)";

    [TestMethod]
    public void InitialMessage_HasQemusLayout_AndRoundTrips()
    {
        byte[] message = new byte[MultifdPackets.InitLength];
        message.AsSpan().Fill(0xEE);
        MultifdPackets.WriteInit(message, id: 3);
        Assert.AreEqual(0x11223344u, BinaryPrimitives.ReadUInt32BigEndian(message));
        Assert.AreEqual(1u, BinaryPrimitives.ReadUInt32BigEndian(message.AsSpan(4)));
        Assert.AreEqual(3, message[24], "the id follows the 16-byte uuid");
        Assert.IsTrue(message.AsSpan(8, 16).IndexOfAnyExcept((byte)0) < 0, "Modular sends a zero uuid");
        Assert.IsTrue(message.AsSpan(25).IndexOfAnyExcept((byte)0) < 0, "the unused fields are zero");
        Assert.AreEqual(3, MultifdPackets.ReadInit(message, Channel));

        BinaryPrimitives.WriteUInt32BigEndian(message, 0x5145564D); // "QEVM": a main stream, not a multifd channel
        MigrationStreamException wrong = Assert.ThrowsExactly<MigrationStreamException>(() => MultifdPackets.ReadInit(message, Channel));
        StringAssert.Contains(wrong.Message, "magic 0x5145564d");
        StringAssert.Contains(wrong.Message, Channel);
    }

    [TestMethod]
    public void PacketHeader_HasQemusLayout_AndRoundTrips()
    {
        byte[] header = new byte[MultifdPackets.HeaderLength];
        ulong[] offsets = [0x1000, 0x2000, 0x7fff000];
        MultifdPackets.WriteHeader(header, MultifdPackets.FlagSync, packetNumber: 42, "pc.ram", offsets);

        Assert.AreEqual(MultifdPackets.FlagSync, BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8)));
        Assert.AreEqual(128u, BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(12)), "pages_alloc");
        Assert.AreEqual(3u, BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(16)), "normal_pages");
        Assert.AreEqual(42ul, BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(24)), "packet_num");
        Assert.AreEqual("pc.ram\0", System.Text.Encoding.ASCII.GetString(header, 64, 7));
        Assert.AreEqual(0x2000ul, BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(320 + 8)));

        ulong[] read = new ulong[MultifdPackets.PagesPerPacket];
        MultifdPackets.Header parsed = MultifdPackets.ReadHeader(header, read, at: 64, Channel);
        Assert.IsTrue(parsed.IsSync);
        Assert.AreEqual(42ul, parsed.PacketNumber);
        Assert.AreEqual("pc.ram", parsed.Block);
        CollectionAssert.AreEqual(offsets, read.AsSpan(0, parsed.NormalPages).ToArray());
    }

    [TestMethod]
    [DataRow(0, 0xDEADBEEFu, "magic 0xdeadbeef")]
    [DataRow(4, 2u, "version 2")]
    [DataRow(8, 2u, "not supported; turn multifd-compression off")]
    [DataRow(12, 64u, "64 page offsets per packet")]
    [DataRow(16, 129u, "129 pages in a packet of at most 128")]
    [DataRow(32, 5u, "set multifd-zero-page-detection to legacy on the source")]
    public void AMalformedField_IsRefusedWithItsOffset(int field, uint value, string expected)
    {
        byte[] header = new byte[MultifdPackets.HeaderLength];
        MultifdPackets.WriteHeader(header, 0, 1, "pc.ram", [0]);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(field), value);

        MigrationStreamException error = Assert.ThrowsExactly<MigrationStreamException>(() => MultifdPackets.ReadHeader(header, new ulong[MultifdPackets.PagesPerPacket], at: 1000, Channel));
        Assert.AreEqual(1000 + field, error.Offset);
        StringAssert.Contains(error.Message, expected);
        StringAssert.Contains(error.Message, Channel);
    }

    [TestMethod]
    public void ABlockNameWithoutItsNul_IsRefused()
    {
        byte[] header = new byte[MultifdPackets.HeaderLength];
        MultifdPackets.WriteHeader(header, 0, 1, "pc.ram", [0]);
        header.AsSpan(64, 256).Fill((byte)'x');
        MigrationStreamException error = Assert.ThrowsExactly<MigrationStreamException>(() => MultifdPackets.ReadHeader(header, new ulong[MultifdPackets.PagesPerPacket], at: 0, Channel));
        Assert.AreEqual(64, error.Offset);
        StringAssert.Contains(error.Message, "not NUL-terminated");
    }
}
