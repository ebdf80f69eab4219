using System.Buffers;

namespace Modular.Transports.Shared;

/// <summary>
/// The pipes' segment memory: fixed-size blocks that go back to this pool when a pipe is done with
/// them and are handed out again, from any thread, without allocating.
/// </summary>
/// <remarks>
/// With the default pool (<see cref="ArrayPool{T}.Shared"/>) a 256 KiB segment returned on one thread
/// was not found by a rent on another, whose cache was empty, so it was allocated afresh on the large
/// object heap. On a postcopy source that happened on the return-path thread at the first requested
/// page (the preempt channel's first page). The allocation set off a blocking collection, and the
/// process stood still for it: measured 5.7 ms of GC pause, 6.5-11.7 ms added to the first request
/// (its usual cost is about 0.1 ms). Blocks outside the cap of free blocks kept here are left to the GC.
/// A pipe fills the pool up front with as many blocks as it can hold at once
/// (<see cref="SegmentsPerPipe"/>): a pool that grew during a migration allocated on the receive
/// thread when the listen thread fell behind at the postcopy switch, and on the fault thread at the
/// first request.
/// </remarks>
internal sealed class RecyclingMemoryPool : MemoryPool<byte>
{
    private readonly int _blockSize;
    private readonly int _maxFree;
    private readonly Stack<Block> _free;
    private readonly Lock _gate = new();

    /// <param name="blockSize">The size of every block (a pipe's minimum segment size).</param>
    /// <param name="maxFree">How many free blocks are kept for reuse at most.</param>
    internal RecyclingMemoryPool(int blockSize, int maxFree)
    {
        _blockSize = blockSize;
        _maxFree = maxFree;
        _free = new Stack<Block>(maxFree);
    }

    /// <summary>How many segments one pipe holds at most: its pause threshold's worth, the one being written and one spare.</summary>
    internal const int SegmentsPerPipe = (int)(SocketPipeTuning.PauseWriterThreshold / SocketPipeTuning.SegmentSize) + 2;

    /// <summary>The process's pool of <see cref="SocketPipeTuning.SegmentSize"/> blocks (at most 64 free, 16 MiB).</summary>
    internal static RecyclingMemoryPool Segments { get; } = new(SocketPipeTuning.SegmentSize, maxFree: 64);

    /// <inheritdoc/>
    public override int MaxBufferSize => _blockSize;

    /// <summary>Free blocks held now (for tests).</summary>
    internal int FreeCount
    {
        get
        {
            lock (_gate)
            {
                return _free.Count;
            }
        }
    }

    /// <summary>
    /// Allocates blocks until at least <paramref name="count"/> are free: a pipe calls this when it
    /// is made, so that its first segments (a requested page's, say) come from here, not from the GC
    /// in the middle of a migration. A new block is written once per page here, so that the kernel
    /// gives it memory now rather than inside a receive into it.
    /// </summary>
    /// <remarks>
    /// Untouched, a block's first receive faulted its 64 pages in inside the system call. A postcopy
    /// destination's listen thread fills its pipe fastest right after LISTEN, where the first page
    /// requests come: traced (session 22), its receive took about 380 faults in the 20 ms around the
    /// first request, and a real-time thread of the request path woken on its core waited 0.5-0.8 ms
    /// for that receive to leave the kernel (preemption mode none). Four alternating rounds of the
    /// bench's postcopy row, 15 runs per transport (about 2150 unix requests per setting): unix
    /// requests over 1 ms 0.46 % against 1.87 %, pooled p99 752 against 1170 µs, first requests over
    /// 1 ms 0 of 60 against 12 of 60; tcp within its noise (p99 938 against 838 µs, first requests the
    /// same). Idle precopy did not change (it receives its pages straight into guest RAM).
    /// </remarks>
    internal void EnsureFree(int count)
    {
        while (true)
        {
            lock (_gate)
            {
                if (_free.Count >= Math.Min(count, _maxFree))
                {
                    return;
                }
            }

            var block = new Block(this, _blockSize) { Rented = false };
            block.Touch();
            Return(block);
        }
    }

    /// <inheritdoc/>
    /// <remarks>A request larger than a block gets a block of its own size, which is not kept afterwards.</remarks>
    public override IMemoryOwner<byte> Rent(int minBufferSize = -1)
    {
        if (minBufferSize > _blockSize)
        {
            return new Block(null, minBufferSize);
        }

        lock (_gate)
        {
            if (_free.TryPop(out Block? block))
            {
                block.Rented = true;
                return block;
            }
        }

        return new Block(this, _blockSize);
    }

    private void Return(Block block)
    {
        lock (_gate)
        {
            if (_free.Count < _maxFree)
            {
                _free.Push(block);
            }
        }
    }

    /// <inheritdoc/>
    protected override void Dispose(bool disposing)
    {
        // Process-wide: blocks stay until the process ends.
    }

    private sealed class Block(RecyclingMemoryPool? pool, int size) : IMemoryOwner<byte>
    {
        private readonly byte[] _array = GC.AllocateUninitializedArray<byte>(size);

        internal bool Rented { get; set; } = true;

        /// <summary>Writes a zero to every page of the block, so that the kernel gives it memory now.</summary>
        internal void Touch()
        {
            for (int at = 0; at < _array.Length; at += Environment.SystemPageSize)
            {
                Volatile.Write(ref _array[at], 0);
            }

            Volatile.Write(ref _array[^1], 0); // the array need not start on a page: its last page, too
        }

        public Memory<byte> Memory => Rented ? _array : throw new ObjectDisposedException(nameof(RecyclingMemoryPool), "a pipe segment was used after it went back to the pool");

        public void Dispose()
        {
            if (!Rented)
            {
                return;
            }

            Rented = false;
            pool?.Return(this);
        }
    }
}
