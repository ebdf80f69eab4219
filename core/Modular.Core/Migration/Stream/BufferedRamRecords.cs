using System.Buffers;
using System.Buffers.Binary;
using System.Runtime.CompilerServices;

namespace Modular.Core.Migration.Stream;

/// <summary>
/// The synchronous fast path for RAM records: whole PAGE and ZERO records that the reader already
/// holds are taken without an await each, so a loader can drain everything one pipe read delivered
/// and the pipe advances once per read rather than once per record.
/// </summary>
public sealed partial class MigrationStreamReader
{
    /// <summary>
    /// Takes the next record when it is a PAGE or ZERO record that lies wholly in what the reader
    /// already holds (header word, block id, then the page or the fill byte 0), without waiting and
    /// without allocating (a block id is decoded only when it names a new block). Returns false and
    /// consumes nothing otherwise: another record kind, a record not yet wholly buffered, or a
    /// malformed one (unsupported flags, CONTINUE with no block named, a non-zero fill byte); read that
    /// record with <see cref="ReadRamRecordHeaderAsync"/> and the calls after it, which wait for the
    /// bytes and name what is wrong.
    /// </summary>
    /// <param name="header">The record's header; <see cref="RecordStart"/> is where it started.</param>
    /// <param name="page">For PAGE, the page bytes as a slice of the pipe's buffer, valid until the next
    /// call on this reader (copy them into guest RAM natively before reading on); empty for ZERO.</param>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // once per record: no tier-0 phase (see RamSaver.SendPage)
    public bool TryReadBufferedRamRecord(out RamRecordHeader header, out ReadOnlySequence<byte> page)
    {
        header = default;
        page = default;
        long buffered = _buffer.Length;
        if (buffered < 8)
        {
            return false;
        }

        ReadOnlySpan<byte> first = _buffer.FirstSpan;
        ulong word;
        if (first.Length >= 8)
        {
            word = BinaryPrimitives.ReadUInt64BigEndian(first);
        }
        else
        {
            Span<byte> tmp = stackalloc byte[8];
            _buffer.Slice(0, 8).CopyTo(tmp);
            word = BinaryPrimitives.ReadUInt64BigEndian(tmp);
        }

        var flags = (RamRecordFlags)(word & RamRecordHeader.FlagMask);
        RamRecordFlags kind = flags & ~RamRecordFlags.Continue;
        if (kind is not (RamRecordFlags.Page or RamRecordFlags.Zero))
        {
            return false;
        }

        bool continues = (flags & RamRecordFlags.Continue) != 0;
        string? blockId;
        long headerLength;
        if (continues)
        {
            blockId = _lastRamBlockId;
            headerLength = 8;
            if (blockId is null)
            {
                return false;
            }
        }
        else
        {
            if (buffered < 9)
            {
                return false;
            }

            int idLength = ByteAt(8);
            headerLength = 9 + idLength;
            if (buffered < headerLength)
            {
                return false;
            }

            ReadOnlySequence<byte> id = _buffer.Slice(9, idLength);
            blockId = _lastRamBlockId is { } last && SameAscii(id, last) ? last : null;
        }

        long bodyLength = kind == RamRecordFlags.Page ? StreamFormat.TargetPageSize : 1;
        if (buffered < headerLength + bodyLength || (kind == RamRecordFlags.Zero && ByteAt(headerLength) != 0))
        {
            return false;
        }

        blockId ??= DecodeString(_buffer.Slice(9, headerLength - 9));
        _lastRamBlockId = blockId;
        BeginRecord("ram record");
        if (kind == RamRecordFlags.Page)
        {
            page = _buffer.Slice(headerLength, StreamFormat.TargetPageSize);
        }

        header = new RamRecordHeader(flags, word & ~RamRecordHeader.FlagMask, blockId);
        _buffer = _buffer.Slice(headerLength + bodyLength);
        _position += headerLength + bodyLength;
        return true;
    }

    /// <summary>The length of a PAGE record that continues the last block: its header word and the page.</summary>
    public const int ContinuedPageRecordLength = 8 + StreamFormat.TargetPageSize;

    /// <summary>
    /// Takes the run of whole PAGE records that continue the last block named (header flags exactly
    /// PAGE | CONTINUE) at the start of what the reader holds in one piece (the first buffer
    /// segment), without a check per record beyond its flags: record i lies at
    /// <c>i * <see cref="ContinuedPageRecordLength"/></c>, its big-endian header word (the page
    /// offset) and then the page. This is how a precopy stream carries RAM (QEMU's too), so a loader
    /// takes most pages here, a run at a time; it must check each offset itself. Returns an empty
    /// span and consumes nothing when the next record is another kind, names its block, or is not
    /// wholly in the first segment: read it with <see cref="TryReadBufferedRamRecord"/>.
    /// </summary>
    /// <param name="blockId">The block every record of the run continues.</param>
    /// <param name="runStart">The stream offset of the run's first record (for errors: record i starts i * <see cref="ContinuedPageRecordLength"/> after it).</param>
    /// <returns>The run, valid until the next call on this reader.</returns>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // once per run of pages (see RamSaver.SendPage)
    public ReadOnlySpan<byte> TryReadBufferedPageRun(out string blockId, out long runStart)
    {
        blockId = _lastRamBlockId ?? "";
        runStart = _position;
        if (_lastRamBlockId is null)
        {
            return default;
        }

        ReadOnlySpan<byte> first = _buffer.FirstSpan;
        const ulong continued = (ulong)(RamRecordFlags.Page | RamRecordFlags.Continue);
        int length = 0;
        while (length + ContinuedPageRecordLength <= first.Length
            && (BinaryPrimitives.ReadUInt64BigEndian(first[length..]) & RamRecordHeader.FlagMask) == continued)
        {
            length += ContinuedPageRecordLength;
        }

        if (length == 0)
        {
            return default;
        }

        BeginRecord("ram record", _position + length - ContinuedPageRecordLength);
        _buffer = _buffer.Slice(length);
        _position += length;
        return first[..length];
    }

    /// <summary>How many bytes the reader holds unconsumed (what the pipe's last read returned and no record has taken).</summary>
    internal long HeldLength => _buffer.Length;

    /// <summary>The big-endian word the held bytes start with; needs <see cref="HeldLength"/> of 8 or more.</summary>
    internal ulong PeekHeldWord()
    {
        Span<byte> word = stackalloc byte[8];
        _buffer.Slice(0, 8).CopyTo(word);
        return BinaryPrimitives.ReadUInt64BigEndian(word);
    }

    /// <summary>True once the pipe said no more bytes will come after those the reader holds.</summary>
    internal bool InputEnded => _completed;

    /// <summary>
    /// For a direct receive (<see cref="Modular.Abstractions.Transports.IDirectReceive"/>): copies the
    /// bytes the reader holds into <paramref name="into"/> and consumes them, so that the pipe holds
    /// nothing unread. <see cref="Position"/> stays where those bytes start: <see cref="SkipReceived"/>
    /// moves it over what the caller used, and what it did not use it hands back to the transport.
    /// </summary>
    /// <param name="into">At least <see cref="HeldLength"/> bytes.</param>
    /// <returns>The count copied.</returns>
    internal int DetachHeld(Span<byte> into)
    {
        int length = checked((int)_buffer.Length);
        _buffer.CopyTo(into);
        if (_holdingResult)
        {
            _input.AdvanceTo(_buffer.End);
            _holdingResult = false;
        }

        _buffer = default;
        return length;
    }

    /// <summary>Moves <see cref="Position"/> over <paramref name="count"/> bytes the caller received and used outside the pipe.</summary>
    /// <param name="count">The bytes, counted from the position (the first of them may be ones <see cref="DetachHeld"/> took).</param>
    internal void SkipReceived(long count) => _position += count;

    private byte ByteAt(long index)
    {
        ReadOnlySpan<byte> first = _buffer.FirstSpan;
        return index < first.Length ? first[(int)index] : _buffer.Slice(index, 1).FirstSpan[0];
    }
}
