using System.Buffers.Binary;
using System.Text;
using Modular.Core.Migration.Engine;
using Modular.Core.Migration.Stream;
using Modular.Tests.Support;

namespace Modular.Tests.Migration.Engine;

/// <summary>
/// A real stream, damaged in one known way, fed to a fresh destination: the load fails with an
/// <see cref="IncomingMigrationException"/> whose message names the byte offset and the record.
/// </summary>
[TestClass]
public sealed class CorruptStreamTests
{
    private static readonly TimeSpan LoadTimeout = TimeSpan.FromSeconds(30);

    [TestMethod]
    public async Task Intact_Loads()
    {
        Assert.IsNull(await RealStream.LoadAsync(await RealStream.GetAsync(), LoadTimeout));
    }

    [TestMethod]
    public async Task WrongMagic_FailsAtByte0()
    {
        byte[] stream = await RealStream.GetAsync();
        Encoding.ASCII.GetBytes("QEVX").CopyTo(stream, 0);
        MigrationStreamException error = await FailAsync(stream);
        Assert.AreEqual(0, error.Offset);
        StringAssert.Contains(error.Message, "0x51455658");
    }

    [TestMethod]
    public async Task WrongVersion_FailsAtByte4()
    {
        byte[] stream = await RealStream.GetAsync();
        BinaryPrimitives.WriteUInt32BigEndian(stream.AsSpan(4), 2);
        MigrationStreamException error = await FailAsync(stream);
        Assert.AreEqual(4, error.Offset);
        StringAssert.Contains(error.Message, "version 2");
    }

    [TestMethod]
    public async Task Truncated_AtSeveralOffsets_FailsNamingTheOffset()
    {
        byte[] stream = await RealStream.GetAsync();
        int serial = SerialSectionAt(stream);
        int[] cuts = [0, 3, 6, 9, 20, stream.Length / 3, stream.Length / 2, serial, serial + 8, SerialStateAt(stream) + 2];
        foreach (int cut in cuts)
        {
            IncomingMigrationException? failure = await RealStream.LoadAsync(stream[..cut], LoadTimeout);
            Assert.IsNotNull(failure, $"a stream cut at byte {cut} of {stream.Length} loaded");
            MigrationStreamException error = AssertStreamError(failure);
            Assert.IsLessThanOrEqualTo(cut, error.Offset, failure.Message);
            StringAssert.Contains(failure.Message, "truncated: the stream ended", $"cut at {cut}: {failure.Message}");
        }
    }

    [TestMethod]
    public async Task TruncatedInsideTheVmDescription_Fails()
    {
        byte[] stream = await RealStream.GetAsync();
        IncomingMigrationException? failure = await RealStream.LoadAsync(stream[..^3], LoadTimeout);
        Assert.IsNotNull(failure, "a stream missing the end of its VM description loaded");
        AssertStreamError(failure);
    }

    [TestMethod]
    public async Task UnknownSectionIdString_FailsNamingIt()
    {
        byte[] stream = await RealStream.GetAsync();
        int full = SerialSectionAt(stream);
        Encoding.ASCII.GetBytes("zerial").CopyTo(stream, full + 6);
        MigrationStreamException error = await FailAsync(stream);
        Assert.AreEqual(full, error.Offset);
        StringAssert.Contains(error.Message, "unknown section 'zerial' instance 0");
        StringAssert.Contains(error.Message, "serial/0");
    }

    [TestMethod]
    public async Task PartForASectionIdNeverStarted_FailsAtThatRecord()
    {
        byte[] stream = await RealStream.GetAsync();
        int full = SerialSectionAt(stream);
        byte[] bogus = [(byte)SectionType.Part, 0, 0, 0, 99];
        byte[] damaged = [.. stream[..full], .. bogus, .. stream[full..]];
        MigrationStreamException error = await FailAsync(damaged);
        Assert.AreEqual(full, error.Offset);
        StringAssert.Contains(error.Message, "section id 99 was never started");
    }

    [TestMethod]
    public async Task FooterWithTheWrongSectionId_Fails()
    {
        byte[] stream = await RealStream.GetAsync();
        int full = SerialSectionAt(stream);
        int footer = full - 5;
        Assert.AreEqual((byte)SectionType.Footer, stream[footer]);
        stream[footer + 4] = 42;
        MigrationStreamException error = await FailAsync(stream);
        Assert.AreEqual(footer, error.Offset);
        StringAssert.Contains(error.Message, "42");
    }

    [TestMethod]
    public async Task SectionVersionNewerThanTheDevice_FailsNamingBoth()
    {
        byte[] stream = await RealStream.GetAsync();
        int full = SerialSectionAt(stream);
        BinaryPrimitives.WriteUInt32BigEndian(stream.AsSpan(full + 6 + 6 + 4), 7);
        MigrationStreamException error = await FailAsync(stream);
        Assert.AreEqual(full, error.Offset);
        StringAssert.Contains(error.Message, "section 'serial' instance 0 has version 7, newer than this device supports (1)");
    }

    [TestMethod]
    public async Task RamBlockNameMismatch_FailsNamingTheBlock()
    {
        byte[] stream = await RealStream.GetAsync();
        int name = RealStream.IndexOf(stream, "pc.ram"u8);
        Encoding.ASCII.GetBytes("pc.rom").CopyTo(stream, name);
        MigrationStreamException error = await FailAsync(stream);
        Assert.IsLessThan((long)name, error.Offset);
        StringAssert.Contains(error.Message, "RAM block 'pc.rom' does not exist on this machine (it has pc.ram)");
    }

    [TestMethod]
    public async Task RamBlockSizeMismatch_FailsSayingWhichSizeToUse()
    {
        byte[] stream = await RealStream.GetAsync();
        IncomingMigrationException? failure = await RealStream.LoadAsync(stream, LoadTimeout, memory: 32UL << 20);
        Assert.IsNotNull(failure);
        MigrationStreamException error = AssertStreamError(failure);
        StringAssert.Contains(error.Message, "RAM block 'pc.ram' is 0x1000000 bytes on the source but 0x2000000 here; start the destination with the same memory size (16 MiB)");
    }

    [TestMethod]
    [Timeout(120_000, CooperativeCancellation = true)]
    public async Task Cli_IncomingFromACorruptFile_Exits1WithTheMessage()
    {
        byte[] stream = await RealStream.GetAsync();
        int full = SerialSectionAt(stream);
        BinaryPrimitives.WriteUInt32BigEndian(stream.AsSpan(full + 6 + 6 + 4), 7);
        string path = Path.Combine(Path.GetTempPath(), $"modular-bad-{Guid.NewGuid():n}.stream");
        await File.WriteAllBytesAsync(path, stream);
        try
        {
            CliProcess.Result result = CliProcess.Run(
                TimeSpan.FromSeconds(90), "run", "--incoming", "file:" + path, "--memory", "16M",
                "--set", "machine.accelerator=synthetic", "--serial", "null");
            Assert.AreEqual(1, result.ExitCode, result.StdErr);
            StringAssert.Contains(
                result.StdErr,
                $"modular: Incoming migration failed: Migration stream error at byte {full}: section FULL: section 'serial' instance 0 has version 7, newer than this device supports (1); upgrade the destination's plugin.");
        }
        finally
        {
            File.Delete(path);
        }
    }

    /// <summary>Where the serial port's SECTION_FULL record starts.</summary>
    internal static int SerialSectionAt(byte[] stream)
    {
        int name = RealStream.IndexOf(stream, [6, .. "serial"u8]);
        int full = name - 5;
        Assert.AreEqual((byte)SectionType.Full, stream[full], "the serial section is a SECTION_FULL");
        return full;
    }

    /// <summary>Where the serial section's state blob starts (after its be32 length).</summary>
    private static int SerialStateAt(byte[] stream) => SerialSectionAt(stream) + 1 + 4 + 7 + 4 + 4 + 4;

    private static async Task<MigrationStreamException> FailAsync(byte[] stream)
    {
        IncomingMigrationException? failure = await RealStream.LoadAsync(stream, LoadTimeout);
        Assert.IsNotNull(failure, "the damaged stream loaded");
        return AssertStreamError(failure);
    }

    private static MigrationStreamException AssertStreamError(IncomingMigrationException failure)
    {
        MigrationStreamException error = failure.InnerException as MigrationStreamException
            ?? throw new AssertFailedException($"expected a stream error, got {failure.InnerException?.GetType().Name}: {failure.Message}");
        StringAssert.StartsWith(failure.Message, $"Incoming migration failed: Migration stream error at byte {error.Offset}: ");
        Assert.IsFalse(string.IsNullOrEmpty(error.Record), failure.Message);
        return error;
    }
}
