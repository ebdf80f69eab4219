using System.Buffers.Binary;
using Modular.Abstractions.Transports;
using Modular.Core.Memory;
using Modular.Core.Migration.Stream;

namespace Modular.Core.Migration.Engine;

/// <summary>
/// Precopy pages received straight into guest RAM (<see cref="IDirectReceive"/>), without the copy
/// out of the transport's pipe: a precopy stream's first pass carries RAM as runs of PAGE | CONTINUE
/// records at consecutive offsets (QEMU's and Modular's sources walk the dirty bitmap in order), so
/// after such a record the loader guesses that the next ones continue the run. It lays the receive
/// out accordingly (each 8-byte header word into a scratch slot, each page into its place in guest
/// RAM), receives, and checks every header that came. A record that is not the guessed one (a ZERO
/// record, the section's EOS, a page elsewhere) and everything after it goes back to the transport,
/// which delivers it through the pipe to the usual path.
/// </summary>
/// <remarks>
/// <para>A wrong guess has written stream bytes over guest pages, so the loader guesses only pages
/// past the highest page any record has loaded into the block (<see cref="_loadedEnd"/>): pages that
/// hold nothing received yet. It zeroes those it wrote over, the state of a fresh destination's RAM;
/// and a precopy source sends every page in its first pass (a ZERO record checks the page and
/// clears it if needed), so the zeroing matters only should a source not.</para>
/// <para>Only in precopy without multifd or postcopy (whose pages are placed whole, atomically, and
/// tracked per page), on the transport's receiving thread: the transport says when
/// (<see cref="IDirectReceive.CanReceiveDirect"/>).</para>
/// </remarks>
internal sealed partial class RamLoader
{
    private const int RecordLength = MigrationStreamReader.ContinuedPageRecordLength;
    private const int PageSize = RamBlock.TargetPageSize;
    private const int MaxDirectRecords = 511; // a header and a page segment each, plus a partial one: within IOV_MAX (1024)
    private const int FirstDirectWindow = 16;  // records per receive after a wrong guess; doubles while guesses hold
    private const ulong ContinuedPage = (ulong)(RamRecordFlags.Page | RamRecordFlags.Continue);

    private byte[]? _directHeaders;
    private byte[]? _directTail;
    private RawSegment[]? _directSegments;
    private byte[] _directBack = [];
    private int _directWindow = FirstDirectWindow;

    /// <summary>The connection's direct receive (<see cref="IDirectReceive"/>), or null: precopy pages then come through the pipe only.</summary>
    internal IDirectReceive? Direct { get; set; }

    /// <summary>Pages received straight into guest RAM.</summary>
    internal long DirectPages { get; private set; }

    /// <summary>Direct receives that ended at a record other than the guessed page (its bytes went back through the pipe).</summary>
    internal long DirectMisses { get; private set; }

    /// <summary>
    /// After a PAGE record at the block's highest loaded page, with less than a record left in the
    /// reader: receives the following records directly as long as they are the guessed pages. Returns
    /// false when it did not try (the caller reads the pipe as usual), true when it received (or
    /// handed bytes back to the pipe): the caller then looks at what the reader holds again.
    /// </summary>
    private unsafe bool ReceivePagesDirect(MigrationStreamReader reader)
    {
        IDirectReceive direct = Direct!;
        RamBlock? block = _lastBlock;
        ulong first = _lastPageEnd;
        long held = reader.HeldLength;
        if (_hostPages is not null || Multifd is not null || block is null || reader.InputEnded
            || first != _loadedEnd[_lastBlockIndex] || first > block.Size - PageSize
            || held >= RecordLength
            || (held >= 8 && reader.PeekHeldWord() != (first | ContinuedPage))
            || !direct.CanReceiveDirect)
        {
            return false;
        }

        _directHeaders ??= GC.AllocateArray<byte>(8 * MaxDirectRecords, pinned: true);
        _directTail ??= GC.AllocateArray<byte>(RecordLength, pinned: true);
        _directSegments ??= new RawSegment[1 + 2 * MaxDirectRecords];
        int records = (int)Math.Min(MaxDirectRecords, (block.Size - first) / PageSize);
        using RamBlock.MappingLease lease = block.KeepMapped();

        // What the reader held (part of the first record) goes where the rest will: its header bytes
        // into the first slot, its page bytes into the first page.
        int tail = reader.DetachHeld(_directTail);
        _directTail.AsSpan(0, Math.Min(tail, 8)).CopyTo(_directHeaders);
        if (tail > 8)
        {
            block.CopyIn(first, _directTail.AsSpan(8, tail - 8));
        }

        long filled = tail;
        int verified = tail >= 8 ? 1 : 0; // the first header was checked above
        fixed (byte* headers = _directHeaders)
        {
            while (filled < (long)records * RecordLength)
            {
                int limit = (int)Math.Min(records, filled / RecordLength + _directWindow);
                int count = Lay(headers, block.HostAddress + (nint)first, filled, limit);
                int received = direct.ReceiveDirect(_directSegments.AsSpan(0, count));
                if (received == 0)
                {
                    break; // the end or a failure: what came goes back, and the pipe reports the end after it
                }

                filled += received;
                if (filled == (long)limit * RecordLength)
                {
                    _directWindow = Math.Min(2 * _directWindow, MaxDirectRecords);
                }

                while (verified < records && (long)verified * RecordLength + 8 <= filled)
                {
                    ulong word = BinaryPrimitives.ReadUInt64BigEndian(new ReadOnlySpan<byte>(headers + 8 * verified, 8));
                    if (word != ((first + (ulong)verified * PageSize) | ContinuedPage))
                    {
                        _directWindow = FirstDirectWindow;
                        DirectMisses++;
                        Settle(block, first, verified, filled, headers, reader, direct);
                        return true;
                    }

                    verified++;
                }
            }
        }

        fixed (byte* headers = _directHeaders)
        {
            Settle(block, first, verified, filled, headers, reader, direct);
        }

        return true;
    }

    /// <summary>
    /// Lays out the segments for the bytes from <paramref name="filled"/> (counted from the first
    /// record's start) to the end of record <paramref name="limit"/> - 1. Returns the segment count.
    /// </summary>
    private unsafe int Lay(byte* headers, nint pages, long filled, int limit)
    {
        RawSegment[] segments = _directSegments!;
        int count = 0;
        for (int record = (int)(filled / RecordLength); record < limit; record++)
        {
            long start = (long)record * RecordLength;
            int into = (int)Math.Max(0, filled - start); // bytes of this record already here
            if (into < 8)
            {
                segments[count++] = new RawSegment((nint)(headers + 8 * record + into), 8 - into);
                into = 8;
            }

            int pageInto = into - 8;
            segments[count++] = new RawSegment(pages + (nint)record * PageSize + pageInto, PageSize - pageInto);
        }

        return count;
    }

    /// <summary>
    /// Loads the records whose header matched and whose page came whole, moves the reader over them,
    /// and hands the rest back to the transport (their bytes gathered from the header slots and the
    /// pages they were written into, those pages zeroed again).
    /// </summary>
    private unsafe void Settle(RamBlock block, ulong first, int verified, long filled, byte* headers, MigrationStreamReader reader, IDirectReceive direct)
    {
        int complete = (int)Math.Min(verified, filled / RecordLength);
        if (complete > 0)
        {
            NotePageLoaded(first + (ulong)(complete - 1) * PageSize);
            _stats.AddNormal(complete);
            DirectPages += complete;
        }

        reader.SkipReceived((long)complete * RecordLength);
        long rest = filled - (long)complete * RecordLength;
        if (rest == 0)
        {
            return;
        }

        if (_directBack.Length < rest)
        {
            _directBack = new byte[Math.Max(rest, 2L * _directBack.Length)];
        }

        int written = 0;
        for (int record = complete; (long)record * RecordLength < filled; record++)
        {
            long start = (long)record * RecordLength;
            int header = (int)Math.Min(8, filled - start);
            new ReadOnlySpan<byte>(headers + 8 * record, header).CopyTo(_directBack.AsSpan(written));
            written += header;
            int page = (int)Math.Min(PageSize, filled - start - 8);
            if (page > 0)
            {
                ulong offset = first + (ulong)record * PageSize;
                block.CopyOut(offset, _directBack.AsSpan(written, page));
                written += page;
                block.CopyIn(offset, _zero);
            }
        }

        direct.GiveBack(_directBack.AsSpan(0, written));
    }
}
