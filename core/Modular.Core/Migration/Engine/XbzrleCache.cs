using Modular.Core.Memory;
using Modular.Core.Migration.Stream;

namespace Modular.Core.Migration.Engine;

/// <summary>
/// The source's XBZRLE cache (QEMU's page_cache): a copy of pages as last sent, direct-mapped (page
/// number modulo the number of slots, a power of two), so that a page sent again can go as its
/// difference (<see cref="Xbzrle"/>). Holds xbzrle-cache-size bytes of page copies; a slot keeps one
/// page at a time. Migration task only.
/// </summary>
internal sealed class XbzrleCache
{
    private readonly byte[] _pages;
    private readonly long[] _keys; // block index and page + 1 per slot; 0 = empty
    private readonly int _slotMask;
    private readonly byte[] _current = GC.AllocateUninitializedArray<byte>(RamBlock.TargetPageSize, pinned: true);
    private readonly byte[] _encoded = GC.AllocateUninitializedArray<byte>(RamBlock.TargetPageSize, pinned: true);

    /// <summary>The largest cache Modular keeps (one managed array): 1 GiB.</summary>
    internal const ulong MaxSize = 1UL << 30;

    /// <param name="size">xbzrle-cache-size: a power of two of at least one page; above <see cref="MaxSize"/> it is capped there.</param>
    internal XbzrleCache(ulong size)
    {
        int slots = (int)(Math.Min(size, MaxSize) / RamBlock.TargetPageSize);
        _pages = GC.AllocateUninitializedArray<byte>(slots * RamBlock.TargetPageSize);
        _keys = new long[slots];
        _slotMask = slots - 1;
        Size = (ulong)slots * RamBlock.TargetPageSize;
    }

    /// <summary>The cache's bytes (query-migrate's xbzrle-cache.cache-size).</summary>
    internal ulong Size { get; }

    /// <summary>
    /// True once the first round over RAM is done (QEMU's xbzrle_started): before it, every page goes
    /// whole and nothing is cached.
    /// </summary>
    internal bool Started { get; set; }

    /// <summary>
    /// Sends page <paramref name="page"/> of <paramref name="block"/> (index <paramref name="blockIndex"/>):
    /// a ZERO record for a zero page, an XBZRLE record when its last copy is cached and the
    /// difference is smaller than a page, nothing when it did not change, else a whole PAGE record
    /// from a copy that also goes into the cache (so that the destination and the cache hold the same
    /// bytes: the guest may write the page again meanwhile). <paramref name="lastStage"/>: with the
    /// guest stopped for good, a miss is not cached (QEMU's last_stage).
    /// </summary>
    internal void Send(MigrationStreamWriter writer, RamBlock block, int blockIndex, long page, bool lastStage, MigrationStats stats)
    {
        ulong offset = (ulong)page * RamBlock.TargetPageSize;
        block.CopyOut(offset, _current);
        long key = ((long)blockIndex << 40) | (page + 1);
        int slot = (int)(page & _slotMask);
        Span<byte> cached = _pages.AsSpan(slot * RamBlock.TargetPageSize, RamBlock.TargetPageSize);
        bool hit = _keys[slot] == key;
        if (_current.AsSpan().IndexOfAnyExcept((byte)0) < 0)
        {
            if (hit)
            {
                cached.Clear(); // QEMU's xbzrle_cache_zero_page: the next difference starts from zeros
            }

            writer.WriteRamZeroPage(block.Name, offset);
            stats.AddDuplicate();
            return;
        }

        if (hit)
        {
            int length = Xbzrle.Encode(cached, _current, _encoded);
            if (length == 0)
            {
                stats.AddXbzrleUnchanged();
                return; // the destination holds these bytes already
            }

            _current.CopyTo(cached);
            if (length > 0)
            {
                writer.WriteRamXbzrlePage(block.Name, offset, _encoded.AsSpan(0, length));
                stats.AddXbzrlePage(length);
                return;
            }

            stats.AddXbzrleOverflow();
        }
        else
        {
            stats.AddXbzrleMiss();
            if (!lastStage)
            {
                _keys[slot] = key;
                _current.CopyTo(cached);
            }
        }

        writer.WriteRamPage(block.Name, offset, _current);
        stats.AddNormal();
    }
}
