using System.Buffers.Binary;
using System.Text;

namespace Modular.Core.Migration.Stream;

/// <summary>
/// A COMMAND record: 0x08, be16 command, be16 payload length, payload. Each command is a subtype;
/// <see cref="ReadFromAsync"/> checks the length against the command's fixed length as QEMU's
/// loadvm_process_command does, then parses the payload.
/// </summary>
public abstract record StreamCommand
{
    /// <summary>The command number.</summary>
    public abstract MigrationCommand Kind { get; }

    /// <summary>The record name used in errors, e.g. <c>command PING</c>.</summary>
    public static string RecordName(MigrationCommand kind) => "command " + kind switch
    {
        MigrationCommand.OpenReturnPath => "OPEN_RETURN_PATH",
        MigrationCommand.Ping => "PING",
        MigrationCommand.PostcopyAdvise => "POSTCOPY_ADVISE",
        MigrationCommand.PostcopyListen => "POSTCOPY_LISTEN",
        MigrationCommand.PostcopyRun => "POSTCOPY_RUN",
        MigrationCommand.PostcopyRamDiscard => "POSTCOPY_RAM_DISCARD",
        MigrationCommand.Packaged => "PACKAGED",
        MigrationCommand.EnableColo => "ENABLE_COLO",
        MigrationCommand.PostcopyResume => "POSTCOPY_RESUME",
        MigrationCommand.RecvBitmap => "RECV_BITMAP",
        MigrationCommand.SwitchoverStart => "SWITCHOVER_START",
        _ => $"0x{(ushort)kind:x4}",
    };

    /// <summary>The payload length; at most 65535.</summary>
    protected abstract int PayloadLength { get; }

    /// <summary>Writes the payload (exactly <see cref="PayloadLength"/> bytes).</summary>
    /// <param name="payload">Where to write.</param>
    protected abstract void WritePayload(Span<byte> payload);

    /// <summary>Writes the record, type byte included.</summary>
    /// <param name="writer">The stream.</param>
    public void WriteTo(MigrationStreamWriter writer)
    {
        ArgumentNullException.ThrowIfNull(writer);
        int length = PayloadLength;
        if (length > ushort.MaxValue)
        {
            throw new InvalidOperationException($"{RecordName(Kind)} payload of {length} bytes exceeds the 65535 a command can carry.");
        }

        writer.WriteU8((byte)SectionType.Command);
        writer.WriteBe16((ushort)Kind);
        writer.WriteBe16((ushort)length);
        Span<byte> span = writer.GetSpan(length)[..length];
        WritePayload(span);
        writer.Advance(length);
    }

    /// <summary>Reads a command after its 0x08 type byte.</summary>
    /// <param name="reader">The stream, just after the 0x08 byte.</param>
    public static async ValueTask<StreamCommand> ReadFromAsync(MigrationStreamReader reader)
    {
        ArgumentNullException.ThrowIfNull(reader);
        long start = reader.Position - 1; // the 0x08 type byte
        reader.BeginRecord("command", start);
        ushort raw = await reader.ReadBe16Async("command number").ConfigureAwait(false);
        var kind = (MigrationCommand)raw;
        reader.BeginRecord(RecordName(kind), start);
        long lengthAt = reader.Position;
        ushort length = await reader.ReadBe16Async("payload length").ConfigureAwait(false);
        int expected = kind switch
        {
            MigrationCommand.OpenReturnPath or MigrationCommand.PostcopyListen or MigrationCommand.PostcopyRun
                or MigrationCommand.PostcopyResume or MigrationCommand.SwitchoverStart => 0,
            MigrationCommand.Ping => 4,
            MigrationCommand.PostcopyAdvise => 16,
            MigrationCommand.Packaged => 4,
            MigrationCommand.PostcopyRamDiscard or MigrationCommand.RecvBitmap => -1,
            MigrationCommand.EnableColo => throw reader.Error("COLO is not supported by Modular"),
            _ => throw reader.Error($"unknown command 0x{raw:x4} (length {length})"),
        };
        if (expected >= 0 && length != expected)
        {
            throw reader.ErrorAt(lengthAt, $"payload length is {length}, expected {expected}");
        }

        switch (kind)
        {
            case MigrationCommand.OpenReturnPath: return new OpenReturnPathCommand();
            case MigrationCommand.PostcopyListen: return new PostcopyListenCommand();
            case MigrationCommand.PostcopyRun: return new PostcopyRunCommand();
            case MigrationCommand.PostcopyResume: return new PostcopyResumeCommand();
            case MigrationCommand.SwitchoverStart: return new SwitchoverStartCommand();
            case MigrationCommand.Ping: return new PingCommand(await reader.ReadBe32Async("ping value").ConfigureAwait(false));
            case MigrationCommand.Packaged: return new PackagedCommand(await reader.ReadBe32Async("package length").ConfigureAwait(false));
            case MigrationCommand.PostcopyAdvise:
                ulong host = await reader.ReadBe64Async("host page size summary").ConfigureAwait(false);
                ulong target = await reader.ReadBe64Async("target page size").ConfigureAwait(false);
                return new PostcopyAdviseCommand(host, target);
            case MigrationCommand.RecvBitmap:
                string block = await reader.ReadCountedStringAsync("RAM block id").ConfigureAwait(false);
                if (length != Encoding.UTF8.GetByteCount(block) + 1)
                {
                    throw reader.ErrorAt(lengthAt, $"payload length {length} does not match the block id '{block}'");
                }

                return new RecvBitmapCommand(block);
            default:
                return await PostcopyRamDiscardCommand.ReadPayloadAsync(reader, length, lengthAt).ConfigureAwait(false);
        }
    }
}

/// <summary>OPEN_RETURN_PATH: the destination opens the return path. No payload.</summary>
public sealed record OpenReturnPathCommand : StreamCommand
{
    /// <inheritdoc/>
    public override MigrationCommand Kind => MigrationCommand.OpenReturnPath;

    /// <inheritdoc/>
    protected override int PayloadLength => 0;

    /// <inheritdoc/>
    protected override void WritePayload(Span<byte> payload) { }
}

/// <summary>PING: be32 value the destination echoes in a PONG.</summary>
/// <param name="Value">The value.</param>
public sealed record PingCommand(uint Value) : StreamCommand
{
    /// <inheritdoc/>
    public override MigrationCommand Kind => MigrationCommand.Ping;

    /// <inheritdoc/>
    protected override int PayloadLength => 4;

    /// <inheritdoc/>
    protected override void WritePayload(Span<byte> payload) => BinaryPrimitives.WriteUInt32BigEndian(payload, Value);
}

/// <summary>POSTCOPY_ADVISE: be64 host page size summary (OR of all RAM block page sizes), be64 target page size.</summary>
/// <param name="HostPageSizeSummary">The OR of the page sizes of all RAM blocks (4096 without huge pages).</param>
/// <param name="TargetPageSize">The target page size (4096 on x86).</param>
public sealed record PostcopyAdviseCommand(ulong HostPageSizeSummary, ulong TargetPageSize) : StreamCommand
{
    /// <inheritdoc/>
    public override MigrationCommand Kind => MigrationCommand.PostcopyAdvise;

    /// <inheritdoc/>
    protected override int PayloadLength => 16;

    /// <inheritdoc/>
    protected override void WritePayload(Span<byte> payload)
    {
        BinaryPrimitives.WriteUInt64BigEndian(payload, HostPageSizeSummary);
        BinaryPrimitives.WriteUInt64BigEndian(payload[8..], TargetPageSize);
    }
}

/// <summary>POSTCOPY_LISTEN: the destination starts its listen thread. No payload.</summary>
public sealed record PostcopyListenCommand : StreamCommand
{
    /// <inheritdoc/>
    public override MigrationCommand Kind => MigrationCommand.PostcopyListen;

    /// <inheritdoc/>
    protected override int PayloadLength => 0;

    /// <inheritdoc/>
    protected override void WritePayload(Span<byte> payload) { }
}

/// <summary>POSTCOPY_RUN: the destination starts the vCPUs. No payload.</summary>
public sealed record PostcopyRunCommand : StreamCommand
{
    /// <inheritdoc/>
    public override MigrationCommand Kind => MigrationCommand.PostcopyRun;

    /// <inheritdoc/>
    protected override int PayloadLength => 0;

    /// <inheritdoc/>
    protected override void WritePayload(Span<byte> payload) { }
}

/// <summary>POSTCOPY_RESUME: postcopy recovery, the source is ready to go on. No payload.</summary>
public sealed record PostcopyResumeCommand : StreamCommand
{
    /// <inheritdoc/>
    public override MigrationCommand Kind => MigrationCommand.PostcopyResume;

    /// <inheritdoc/>
    protected override int PayloadLength => 0;

    /// <inheritdoc/>
    protected override void WritePayload(Span<byte> payload) { }
}

/// <summary>SWITCHOVER_START: the source is about to switch over. No payload.</summary>
public sealed record SwitchoverStartCommand : StreamCommand
{
    /// <inheritdoc/>
    public override MigrationCommand Kind => MigrationCommand.SwitchoverStart;

    /// <inheritdoc/>
    protected override int PayloadLength => 0;

    /// <inheritdoc/>
    protected override void WritePayload(Span<byte> payload) { }
}

/// <summary>
/// PACKAGED: be32 length; that many bytes of stream follow the command and are parsed as a nested
/// stream (no header) by the destination's main thread. Write it with <see cref="WriteWithPackage"/>,
/// read the blob with <see cref="ReadPackageAsync"/>.
/// </summary>
/// <param name="Length">The blob length.</param>
public sealed record PackagedCommand(uint Length) : StreamCommand
{
    /// <inheritdoc/>
    public override MigrationCommand Kind => MigrationCommand.Packaged;

    /// <inheritdoc/>
    protected override int PayloadLength => 4;

    /// <inheritdoc/>
    protected override void WritePayload(Span<byte> payload) => BinaryPrimitives.WriteUInt32BigEndian(payload, Length);

    /// <summary>Writes the command followed by the blob.</summary>
    /// <param name="writer">The stream.</param>
    /// <param name="package">The nested stream: LISTEN, device sections, RUN.</param>
    public static void WriteWithPackage(MigrationStreamWriter writer, ReadOnlySpan<byte> package)
    {
        ArgumentNullException.ThrowIfNull(writer);
        new PackagedCommand((uint)package.Length).WriteTo(writer);
        writer.WriteBytes(package);
    }

    /// <summary>Reads the blob that follows this command, refusing lengths over the reader's limit before allocating.</summary>
    /// <param name="reader">The stream, just after the command.</param>
    /// <returns>The blob and the stream offset of its first byte (for a nested reader's error offsets).</returns>
    public async ValueTask<(byte[] Package, long Offset)> ReadPackageAsync(MigrationStreamReader reader)
    {
        ArgumentNullException.ThrowIfNull(reader);
        long at = reader.Position;
        byte[] package = await reader.ReadBlobAsync(Length, reader.Limits.MaxPackagedLength, at - 4, "package").ConfigureAwait(false);
        return (package, at);
    }
}

/// <summary>RECV_BITMAP: postcopy recovery, the source asks for the received bitmap of one RAM block.</summary>
/// <param name="BlockId">The RAM block id.</param>
public sealed record RecvBitmapCommand(string BlockId) : StreamCommand
{
    /// <inheritdoc/>
    public override MigrationCommand Kind => MigrationCommand.RecvBitmap;

    /// <inheritdoc/>
    protected override int PayloadLength => 1 + Encoding.UTF8.GetByteCount(BlockId);

    /// <inheritdoc/>
    protected override void WritePayload(Span<byte> payload)
    {
        payload[0] = (byte)Encoding.UTF8.GetBytes(BlockId, payload[1..]);
    }
}

/// <summary>
/// POSTCOPY_RAM_DISCARD: pages the destination must drop because they were sent and then dirtied
/// again. Payload: u8 version 0, u8 length + RAM block id, u8 0 terminator, then be64 start /
/// be64 length pairs (bytes in the block).
/// </summary>
/// <param name="BlockId">The RAM block id.</param>
/// <param name="Ranges">Byte ranges (start, length) in the block.</param>
public sealed record PostcopyRamDiscardCommand(string BlockId, IReadOnlyList<(ulong Start, ulong Length)> Ranges) : StreamCommand
{
    /// <summary>How many ranges fit in one command for a block id of <paramref name="blockIdLength"/> bytes.</summary>
    /// <param name="blockIdLength">UTF-8 length of the block id.</param>
    public static int MaxRanges(int blockIdLength) => (ushort.MaxValue - 3 - blockIdLength) / 16;

    /// <inheritdoc/>
    public override MigrationCommand Kind => MigrationCommand.PostcopyRamDiscard;

    /// <inheritdoc/>
    protected override int PayloadLength => 3 + Encoding.UTF8.GetByteCount(BlockId) + (16 * Ranges.Count);

    /// <inheritdoc/>
    protected override void WritePayload(Span<byte> payload)
    {
        payload[0] = StreamFormat.RamDiscardVersion;
        int n = Encoding.UTF8.GetBytes(BlockId, payload[2..]);
        payload[1] = checked((byte)n);
        payload[2 + n] = 0;
        Span<byte> pairs = payload[(3 + n)..];
        foreach ((ulong start, ulong length) in Ranges)
        {
            BinaryPrimitives.WriteUInt64BigEndian(pairs, start);
            BinaryPrimitives.WriteUInt64BigEndian(pairs[8..], length);
            pairs = pairs[16..];
        }
    }

    internal static async ValueTask<PostcopyRamDiscardCommand> ReadPayloadAsync(MigrationStreamReader reader, ushort length, long lengthAt)
    {
        if (length < 3)
        {
            throw reader.ErrorAt(lengthAt, $"payload length {length} is too short for version, block id and terminator");
        }

        long at = reader.Position;
        byte version = await reader.ReadU8Async("version").ConfigureAwait(false);
        if (version != StreamFormat.RamDiscardVersion)
        {
            throw reader.ErrorAt(at, $"version {version} is unknown; only version 0 exists");
        }

        string block = await reader.ReadCountedStringAsync("RAM block id").ConfigureAwait(false);
        at = reader.Position;
        byte nul = await reader.ReadU8Async("terminator").ConfigureAwait(false);
        if (nul != 0)
        {
            throw reader.ErrorAt(at, $"block id '{block}' is not followed by its 0 terminator (found 0x{nul:x2})");
        }

        int rest = length - 3 - Encoding.UTF8.GetByteCount(block);
        if (rest < 0 || rest % 16 != 0)
        {
            throw reader.ErrorAt(lengthAt, $"payload length {length} does not leave whole (start, length) pairs after block id '{block}'");
        }

        var ranges = new (ulong, ulong)[rest / 16];
        for (int i = 0; i < ranges.Length; i++)
        {
            ulong start = await reader.ReadBe64Async("range start").ConfigureAwait(false);
            ulong len = await reader.ReadBe64Async("range length").ConfigureAwait(false);
            ranges[i] = (start, len);
        }

        return new PostcopyRamDiscardCommand(block, ranges);
    }
}
