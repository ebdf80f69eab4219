using System.Buffers;
using System.Runtime.InteropServices;

namespace Modular.Transports.Shared;

/// <summary>
/// The memory a splicing <see cref="GatherSocketWriter"/> hands out for written bytes (stream
/// headers, small records): a ring of blocks, used in order, each block reused only once the peer
/// has provably read every byte that was spliced from it.
/// </summary>
/// <remarks>
/// <para>Why a ring: vmsplice(2) hands the kernel references to the pages, not their bytes, and a
/// unix socket keeps those references in its queue until the receiver has read them. A byte written
/// here and spliced must therefore not change until then, yet the writer's chunks used to be
/// rewritten after every flush. So the bytes go round a ring instead, and a block is taken again
/// only when <see cref="TryGetMemory"/>'s <c>consumed</c> check proves that the stream position
/// after the last splice that used it has been read (see <see cref="GatherSocketWriter"/>'s
/// SIOCOUTQ check). A block still queued is not waited for: the writer copies that flush instead.</para>
/// <para>The ring is mapped memory (mmap), never the GC's: a freed array's memory would be reused
/// for other objects while the socket may still hold its pages. It is unmapped only when the writer
/// is unreachable (the mapping's finalizer); munmap leaves the pages the kernel still references
/// alive with what they hold, so the peer still reads the stream's last bytes intact.</para>
/// <para>Threads: the writer's (one at a time, flushes awaited before writing again).</para>
/// </remarks>
internal sealed unsafe class SpliceRing : MemoryManager<byte>
{
    private readonly Mapping _mapping;
    private readonly int _blockSize;
    private readonly long[] _splicedEnd; // per block: the stream position after the last splice flush that sent bytes from it (0: none)
    private long _position;              // the next byte to hand out, counted since the start (block = _position / _blockSize)
    private long _checkedBlock = -1;     // the block (same count) proven free in this lap
    private long _flushStart = -1;       // where the pending flush's first byte here is, or -1

    /// <param name="size">Bytes; a multiple of <paramref name="blockSize"/>.</param>
    /// <param name="blockSize">A multiple of the page size.</param>
    private SpliceRing(Mapping mapping, int size, int blockSize)
    {
        _mapping = mapping;
        _blockSize = blockSize;
        _splicedEnd = new long[size / blockSize];
    }

    /// <summary>A ring of <paramref name="size"/> bytes in blocks of <paramref name="blockSize"/>, or null when it cannot be mapped.</summary>
    internal static SpliceRing? Create(int size, int blockSize)
    {
        if (size <= 0 || blockSize <= 0 || size % blockSize != 0 || blockSize % Environment.SystemPageSize != 0)
        {
            throw new ArgumentException($"A splice ring of {size} bytes in blocks of {blockSize}: the size must be a multiple of the block, the block of the page size.");
        }

        nint address = SpliceInterop.MapAnonymous((nuint)size);
        return address == 0 ? null : new SpliceRing(new Mapping(address, size), size, blockSize);
    }

    /// <summary>The largest size hint the ring serves (one block); larger ones go to copied chunks.</summary>
    internal int BlockSize => _blockSize;

    /// <summary>
    /// Hands out the rest of the current block when it holds at least <paramref name="sizeHint"/>
    /// bytes, else the next block, when that block is free: no byte of it is part of the pending flush,
    /// and <paramref name="consumed"/> says the stream position after its last splice has been read.
    /// </summary>
    /// <returns>False when the block is not free (the caller copies this flush instead).</returns>
    internal bool TryGetMemory(int sizeHint, Func<long, bool> consumed, out Memory<byte> memory)
    {
        memory = default;
        if (sizeHint > _blockSize)
        {
            return false;
        }

        int offset = (int)(_position % _blockSize);
        if (_blockSize - offset < Math.Max(sizeHint, 1))
        {
            _position += _blockSize - offset; // the rest of the block stays unused this lap
            offset = 0;
        }

        long block = _position / _blockSize;
        if (block != _checkedBlock)
        {
            bool inPendingFlush = _flushStart >= 0 && block - _splicedEnd.Length >= _flushStart / _blockSize;
            if (inPendingFlush || !consumed(_splicedEnd[block % _splicedEnd.Length]))
            {
                return false;
            }

            _checkedBlock = block;
        }

        memory = CreateMemory((int)(_position % Size), _blockSize - offset);
        return true;
    }

    /// <summary>Commits <paramref name="bytes"/> bytes of the memory from <see cref="TryGetMemory"/>; returns their address.</summary>
    internal nint Commit(int bytes)
    {
        if (_flushStart < 0)
        {
            _flushStart = _position;
        }

        nint address = _mapping.Address + (nint)(_position % Size);
        _position += bytes;
        return address;
    }

    /// <summary>
    /// The pending flush ended (sent, canceled or failed). When it went out by splice, every block it
    /// used is marked with <paramref name="streamEnd"/>: a block is free again once the peer has read
    /// up to there. A flush sent by sendmsg copied its bytes, and leaves the marks as they were.
    /// </summary>
    internal void FlushEnded(bool spliced, long streamEnd)
    {
        if (_flushStart >= 0 && spliced)
        {
            for (long block = _flushStart / _blockSize; block <= (_position - 1) / _blockSize; block++)
            {
                _splicedEnd[block % _splicedEnd.Length] = streamEnd;
            }
        }

        _flushStart = -1;
    }

    private int Size => _blockSize * _splicedEnd.Length;

    public override Span<byte> GetSpan() => new((void*)_mapping.Address, Size);

    public override MemoryHandle Pin(int elementIndex = 0) => new((byte*)_mapping.Address + elementIndex);

    public override void Unpin()
    {
        // Mapped memory never moves.
    }

    protected override void Dispose(bool disposing)
    {
        // The mapping goes with its finalizer (see the remarks): the kernel may still read these pages.
    }

    /// <summary>The mapped memory; unmapped when unreachable.</summary>
    private sealed class Mapping : SafeHandle
    {
        private readonly int _size;

        internal Mapping(nint address, int size)
            : base(0, ownsHandle: true)
        {
            SetHandle(address);
            _size = size;
        }

        internal nint Address => handle;

        public override bool IsInvalid => handle == 0;

        protected override bool ReleaseHandle()
        {
            SpliceInterop.Unmap(handle, (nuint)_size);
            return true;
        }
    }
}
