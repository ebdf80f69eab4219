using System.Buffers;
using System.Buffers.Binary;
using System.IO.Pipelines;
using System.Runtime.CompilerServices;
using System.Text;
using Modular.Abstractions.Transports;

namespace Modular.Core.Migration.Stream;

/// <summary>
/// Writes the migration stream into an <see cref="IBufferWriter{T}"/> (normally the transport's
/// <see cref="PipeWriter"/>): big-endian primitives plus the RAM record helpers that track the
/// CONTINUE flag. Wire types write themselves with their <c>WriteTo(MigrationStreamWriter)</c>.
/// Writes go straight into the output's memory; nothing is buffered here, so call
/// <see cref="FlushAsync"/> at record boundaries that should leave the machine.
/// Not thread-safe: one writer thread (the migration thread, or the return-path writer under its lock).
/// </summary>
public sealed class MigrationStreamWriter
{
    private readonly IBufferWriter<byte> _output;
    private readonly IGatherWriter? _gather;
    private string? _lastRamBlockId;

    /// <summary>Writes to <paramref name="output"/>.</summary>
    /// <param name="output">The transport's pipe writer, or a buffer (for PACKAGED blobs and tests).</param>
    /// <param name="basePosition">The stream offset of the first byte written (for nested blobs).</param>
    public MigrationStreamWriter(IBufferWriter<byte> output, long basePosition = 0)
    {
        ArgumentNullException.ThrowIfNull(output);
        _output = output;
        _gather = output as IGatherWriter;
        Position = basePosition;
    }

    /// <summary>True when the output takes bytes by reference (<see cref="IGatherWriter"/>): see <see cref="WriteRamPageByReference"/>.</summary>
    public bool WritesByReference => _gather is not null;

    /// <summary>Number of bytes written so far (plus the base position).</summary>
    public long Position { get; private set; }

    /// <summary>Writes one byte.</summary>
    /// <param name="value">The byte.</param>
    public void WriteU8(byte value)
    {
        _output.GetSpan(1)[0] = value;
        Advance(1);
    }

    /// <summary>Writes a big-endian 16-bit value.</summary>
    /// <param name="value">The value.</param>
    public void WriteBe16(ushort value)
    {
        BinaryPrimitives.WriteUInt16BigEndian(_output.GetSpan(2), value);
        Advance(2);
    }

    /// <summary>Writes a big-endian 32-bit value.</summary>
    /// <param name="value">The value.</param>
    public void WriteBe32(uint value)
    {
        BinaryPrimitives.WriteUInt32BigEndian(_output.GetSpan(4), value);
        Advance(4);
    }

    /// <summary>Writes a big-endian 64-bit value.</summary>
    /// <param name="value">The value.</param>
    public void WriteBe64(ulong value)
    {
        BinaryPrimitives.WriteUInt64BigEndian(_output.GetSpan(8), value);
        Advance(8);
    }

    /// <summary>Writes raw bytes.</summary>
    /// <param name="bytes">The bytes.</param>
    public void WriteBytes(ReadOnlySpan<byte> bytes)
    {
        while (!bytes.IsEmpty)
        {
            Span<byte> span = _output.GetSpan(1);
            int n = Math.Min(span.Length, bytes.Length);
            bytes[..n].CopyTo(span);
            Advance(n);
            bytes = bytes[n..];
        }
    }

    /// <summary>Writes a u8 length and the ASCII/UTF-8 bytes of <paramref name="value"/> (QEMU's counted string).</summary>
    /// <param name="value">At most 255 bytes in UTF-8.</param>
    /// <exception cref="ArgumentException">The string is longer than 255 bytes.</exception>
    public void WriteCountedString(string value)
    {
        ArgumentNullException.ThrowIfNull(value);
        int length = Encoding.UTF8.GetByteCount(value);
        if (length > byte.MaxValue)
        {
            throw new ArgumentException($"'{value}' is {length} bytes long; the stream allows at most 255 for an id string.", nameof(value));
        }

        Span<byte> span = _output.GetSpan(1 + length);
        span[0] = (byte)length;
        Encoding.UTF8.GetBytes(value, span.Slice(1, length));
        Advance(1 + length);
    }

    /// <summary>Returns at least <paramref name="sizeHint"/> contiguous bytes of the output to fill; then call <see cref="Advance"/>.</summary>
    /// <param name="sizeHint">How many bytes are needed.</param>
    public Span<byte> GetSpan(int sizeHint) => _output.GetSpan(sizeHint);

    /// <summary>Commits <paramref name="count"/> bytes written into the span from <see cref="GetSpan"/>.</summary>
    /// <param name="count">Bytes written.</param>
    public void Advance(int count)
    {
        _output.Advance(count);
        Position += count;
    }

    /// <summary>Writes the byte that ends the device state (QEMU_VM_EOF).</summary>
    public void WriteEof() => WriteU8((byte)SectionType.Eof);

    /// <summary>
    /// Forgets the RAM block of the previous RAM record, so the next one carries its id string.
    /// Called by <see cref="SectionHeader.WriteTo"/>: every section part names its block again, which
    /// costs a few bytes and lets a reader start at any part.
    /// </summary>
    public void ResetRamBlock() => _lastRamBlockId = null;

    /// <summary>
    /// Writes the be64 word <c>offset | flags</c> of a RAM record and, unless it is the same block as
    /// the previous record (then CONTINUE is set), the block's id string.
    /// </summary>
    /// <param name="flags"><see cref="RamRecordFlags.Page"/> or <see cref="RamRecordFlags.Zero"/>.</param>
    /// <param name="blockId">The RAM block, e.g. <c>pc.ram</c>.</param>
    /// <param name="offset">Page-aligned offset in the block.</param>
    public void WriteRamRecordHeader(RamRecordFlags flags, string blockId, ulong offset)
    {
        if ((offset & (StreamFormat.TargetPageSize - 1)) != 0)
        {
            throw new ArgumentException($"RAM offset 0x{offset:x} in '{blockId}' is not aligned to {StreamFormat.TargetPageSize} bytes.", nameof(offset));
        }

        if (ReferenceEquals(blockId, _lastRamBlockId) || string.Equals(blockId, _lastRamBlockId, StringComparison.Ordinal))
        {
            WriteBe64(offset | (ulong)(flags | RamRecordFlags.Continue));
            return;
        }

        WriteBe64(offset | (ulong)flags);
        WriteCountedString(blockId);
        _lastRamBlockId = blockId;
    }

    /// <summary>
    /// Starts a PAGE record and returns the <see cref="StreamFormat.TargetPageSize"/> bytes of output
    /// memory to copy the page into (with the native copy; see DESIGN.md §5). Call <see cref="CommitRamPage"/> next.
    /// </summary>
    /// <param name="blockId">The RAM block.</param>
    /// <param name="offset">Page-aligned offset in the block.</param>
    public Span<byte> BeginRamPage(string blockId, ulong offset)
    {
        WriteRamRecordHeader(RamRecordFlags.Page, blockId, offset);
        return _output.GetSpan(StreamFormat.TargetPageSize)[..StreamFormat.TargetPageSize];
    }

    /// <summary>Commits the page bytes written into the span from <see cref="BeginRamPage"/>.</summary>
    public void CommitRamPage() => Advance(StreamFormat.TargetPageSize);

    /// <summary>Writes an XBZRLE record: the header, <see cref="Xbzrle.EncodingFlag"/>, the be16 length and the encoding (QEMU's save_xbzrle_page).</summary>
    /// <param name="blockId">The RAM block.</param>
    /// <param name="offset">Page-aligned offset in the block.</param>
    /// <param name="encoded">1 to <see cref="StreamFormat.TargetPageSize"/> bytes from <see cref="Xbzrle.Encode"/>.</param>
    public void WriteRamXbzrlePage(string blockId, ulong offset, ReadOnlySpan<byte> encoded)
    {
        if (encoded.IsEmpty || encoded.Length > StreamFormat.TargetPageSize)
        {
            throw new ArgumentException($"An XBZRLE encoding is 1 to {StreamFormat.TargetPageSize} bytes, not {encoded.Length}.", nameof(encoded));
        }

        WriteRamRecordHeader(RamRecordFlags.Xbzrle, blockId, offset);
        WriteU8(Xbzrle.EncodingFlag);
        WriteBe16((ushort)encoded.Length);
        WriteBytes(encoded);
    }

    /// <summary>Writes a PAGE record with the given page bytes.</summary>
    /// <param name="blockId">The RAM block.</param>
    /// <param name="offset">Page-aligned offset in the block.</param>
    /// <param name="page">Exactly <see cref="StreamFormat.TargetPageSize"/> bytes.</param>
    public void WriteRamPage(string blockId, ulong offset, ReadOnlySpan<byte> page)
    {
        if (page.Length != StreamFormat.TargetPageSize)
        {
            throw new ArgumentException($"A RAM page is {StreamFormat.TargetPageSize} bytes, not {page.Length}.", nameof(page));
        }

        page.CopyTo(BeginRamPage(blockId, offset));
        CommitRamPage();
    }

    /// <summary>
    /// Writes a PAGE record whose page bytes the transport sends from <paramref name="page"/> at its
    /// next flush, without a copy here (only when <see cref="WritesByReference"/>). The memory must
    /// stay mapped until that flush returns; what it holds then is what is sent.
    /// </summary>
    /// <param name="blockId">The RAM block.</param>
    /// <param name="offset">Page-aligned offset in the block.</param>
    /// <param name="page">Host address of the page's <see cref="StreamFormat.TargetPageSize"/> bytes.</param>
    /// <exception cref="InvalidOperationException">The output does not take references.</exception>
    public void WriteRamPageByReference(string blockId, ulong offset, nint page)
    {
        IGatherWriter gather = _gather ?? throw new InvalidOperationException("This stream's output does not take bytes by reference; copy the page with WriteRamPageOrZero.");
        WriteRamRecordHeader(RamRecordFlags.Page, blockId, offset);
        gather.WriteByReference(page, StreamFormat.TargetPageSize);
        Position += StreamFormat.TargetPageSize;
    }

    /// <summary>Writes a ZERO record (the page is all zeroes): header, then the fill byte 0.</summary>
    /// <param name="blockId">The RAM block.</param>
    /// <param name="offset">Page-aligned offset in the block.</param>
    public void WriteRamZeroPage(string blockId, ulong offset)
    {
        WriteRamRecordHeader(RamRecordFlags.Zero, blockId, offset);
        WriteU8(0);
    }

    /// <summary>
    /// Writes one page as a PAGE record, or as a ZERO record when it is all zero, copying it only once:
    /// <paramref name="copy"/> fills the output memory right after the record header (a native copy
    /// out of guest RAM, DESIGN.md §5); the zero check then reads those copied bytes, so what is
    /// checked is exactly what is sent. A zero page commits only the header and the fill byte.
    /// </summary>
    /// <typeparam name="TState">What <paramref name="copy"/> copies from (e.g. the RAM block).</typeparam>
    /// <param name="blockId">The RAM block.</param>
    /// <param name="offset">Page-aligned offset in the block.</param>
    /// <param name="state">Passed to <paramref name="copy"/>.</param>
    /// <param name="copy">Copies the page at <paramref name="offset"/> into the span it is given (exactly <see cref="StreamFormat.TargetPageSize"/> bytes).</param>
    /// <returns>True when the page was all zero and went out as a ZERO record.</returns>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // once per page: no tier-0 phase (see RamSaver.SendPage)
    public bool WriteRamPageOrZero<TState>(string blockId, ulong offset, TState state, RamPageCopy<TState> copy)
    {
        ArgumentNullException.ThrowIfNull(blockId);
        ArgumentNullException.ThrowIfNull(copy);
        if ((offset & (StreamFormat.TargetPageSize - 1)) != 0)
        {
            throw new ArgumentException($"RAM offset 0x{offset:x} in '{blockId}' is not aligned to {StreamFormat.TargetPageSize} bytes.", nameof(offset));
        }

        bool continues = ReferenceEquals(blockId, _lastRamBlockId) || string.Equals(blockId, _lastRamBlockId, StringComparison.Ordinal);
        int idLength = continues ? 0 : Encoding.UTF8.GetByteCount(blockId);
        if (idLength > byte.MaxValue)
        {
            throw new ArgumentException($"'{blockId}' is {idLength} bytes long; the stream allows at most 255 for an id string.", nameof(blockId));
        }

        int headerLength = continues ? 8 : 8 + 1 + idLength;
        Span<byte> record = _output.GetSpan(headerLength + StreamFormat.TargetPageSize);
        Span<byte> page = record.Slice(headerLength, StreamFormat.TargetPageSize);
        copy(state, offset, page);
        bool zero = !page.ContainsAnyExcept((byte)0);
        RamRecordFlags flags = (zero ? RamRecordFlags.Zero : RamRecordFlags.Page) | (continues ? RamRecordFlags.Continue : 0);
        BinaryPrimitives.WriteUInt64BigEndian(record, offset | (ulong)flags);
        if (!continues)
        {
            record[8] = (byte)idLength;
            Encoding.UTF8.GetBytes(blockId, record.Slice(9, idLength));
            _lastRamBlockId = blockId;
        }

        if (zero)
        {
            record[headerLength] = 0; // the ZERO record's fill byte (the copied page's first byte, already 0)
            Advance(headerLength + 1);
        }
        else
        {
            Advance(headerLength + StreamFormat.TargetPageSize);
        }

        return zero;
    }

    /// <summary>Writes the EOS word that ends a part of the RAM section.</summary>
    public void WriteRamEos() => WriteBe64((ulong)RamRecordFlags.Eos);

    /// <summary>Flushes the output when it is a <see cref="PipeWriter"/>; otherwise does nothing.</summary>
    /// <param name="cancellationToken">Cancels the flush.</param>
    /// <returns>True when the reader has completed (nobody will read further bytes).</returns>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<bool> FlushAsync(CancellationToken cancellationToken = default)
    {
        if (_output is PipeWriter pipe)
        {
            FlushResult result = await pipe.FlushAsync(cancellationToken).ConfigureAwait(false);
            return result.IsCompleted;
        }

        return false;
    }
}

/// <summary>Copies the page at <paramref name="offset"/> of <paramref name="state"/> into <paramref name="destination"/> (see <see cref="MigrationStreamWriter.WriteRamPageOrZero"/>).</summary>
/// <typeparam name="TState">The page's source, e.g. a RAM block.</typeparam>
/// <param name="state">The page's source.</param>
/// <param name="offset">Page-aligned offset in it.</param>
/// <param name="destination">Exactly one page of output memory.</param>
public delegate void RamPageCopy<in TState>(TState state, ulong offset, Span<byte> destination);
