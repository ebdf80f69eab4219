using System.Buffers;
using Modular.Abstractions.Transports;
using Modular.Transports.Rdma.Interop;

namespace Modular.Transports.Rdma;

internal sealed partial class RdmaConnection
{
    private readonly Lock _pageLock = new();
    private readonly Dictionary<string, MemoryRegionHandle> _exposed = new(StringComparer.Ordinal);
    private readonly Dictionary<string, RegionDescriptor> _attached = new(StringComparer.Ordinal);
    private readonly SemaphoreSlim _readSlots = new(StreamLayout.ReadSlots, StreamLayout.ReadSlots);
    private readonly Stack<int> _freeReadSlots = new();
    private readonly TaskCompletionSource?[] _pendingReads = new TaskCompletionSource?[StreamLayout.ReadSlots];

    /// <summary>
    /// Source side: registers the block with IBV_ACCESS_REMOTE_READ on this connection's PD. The region
    /// stays registered (its pages pinned) until the connection is disposed or the block is exposed again.
    /// </summary>
    public ReadOnlyMemory<byte> ExposeRegion(string blockId, nint hostAddress, ulong length)
    {
        ArgumentException.ThrowIfNullOrEmpty(blockId);
        ThrowIfFailed();
        MemoryRegionHandle region;
        try
        {
            region = _pair.RegisterForRemoteRead(hostAddress, length);
        }
        catch (TransportException e)
        {
            throw new TransportException(
                $"Cannot expose RAM block '{blockId}' ({length} bytes at 0x{hostAddress:x}) for RDMA READ on {RemoteDescription}: {e.Message}; " +
                "registration pins the pages, so check the locked-memory limit (ulimit -l).", e);
        }

        lock (_pageLock)
        {
            if (_exposed.Remove(blockId, out MemoryRegionHandle? previous))
            {
                previous.Dispose();
            }

            _exposed[blockId] = region;
        }

        return new RegionDescriptor((ulong)hostAddress, length, region.Rkey).ToBytes();
    }

    /// <summary>Destination side: records where the source exposed <paramref name="blockId"/>.</summary>
    public void AttachRegion(string blockId, ReadOnlyMemory<byte> descriptor)
    {
        ArgumentException.ThrowIfNullOrEmpty(blockId);
        RegionDescriptor parsed = RegionDescriptor.Parse(blockId, descriptor.Span);
        lock (_pageLock)
        {
            _attached[blockId] = parsed;
        }
    }

    /// <summary>
    /// Destination side: RDMA READs the bytes into registered staging slots (up to
    /// <see cref="StreamLayout.ReadSlotSize"/> at a time) and copies them out with a native memcpy, since
    /// <paramref name="destination"/> may be guest RAM (DESIGN.md §5). Any thread; up to
    /// <see cref="StreamLayout.ReadSlots"/> reads run at once.
    /// </summary>
    public async ValueTask ReadAsync(string blockId, ulong offset, Memory<byte> destination, CancellationToken cancellationToken = default)
    {
        RegionDescriptor region;
        lock (_pageLock)
        {
            if (!_attached.TryGetValue(blockId, out region))
            {
                throw new TransportException($"RAM block '{blockId}' has no page channel region on {RemoteDescription}: AttachRegion was not called for it.");
            }
        }

        if (offset > region.Length || (ulong)destination.Length > region.Length - offset)
        {
            throw new ArgumentOutOfRangeException(
                nameof(offset), $"Reading {destination.Length} bytes at offset 0x{offset:x} runs past the end of RAM block '{blockId}' ({region.Length} bytes).");
        }

        using MemoryHandle pinned = destination.Pin();
        int done = 0;
        while (done < destination.Length)
        {
            int length = Math.Min(destination.Length - done, StreamLayout.ReadSlotSize);
            await ReadChunkAsync(region, offset + (ulong)done, pinned, done, length, cancellationToken).ConfigureAwait(false);
            done += length;
        }
    }

    private async Task ReadChunkAsync(RegionDescriptor region, ulong offset, MemoryHandle pinned, int destinationOffset, int length, CancellationToken cancellationToken)
    {
        await _readSlots.WaitAsync(cancellationToken).ConfigureAwait(false);
        int slot;
        var completion = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_sendLock)
        {
            slot = _freeReadSlots.Pop();
            _pendingReads[slot] = completion;
            if (_failure is { } failure)
            {
                ReturnReadSlotLocked(slot);
                throw failure;
            }

            _outstandingSends++;
            _pair.PostRead(slot, region.Address + offset, region.Rkey, length);
        }

        try
        {
            await completion.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            // A posted READ cannot be recalled: the slot is returned when it completes.
            _ = completion.Task.ContinueWith(_ => ReturnReadSlot(slot), TaskScheduler.Default);
            throw;
        }

        unsafe
        {
            // SAFETY: the destination is pinned for the whole ReadAsync; the staging slot holds the READ's
            // bytes until the slot is returned just below.
            Libc.Copy((nint)((byte*)pinned.Pointer + destinationOffset), _pair.StagingSlot(slot), (nuint)length);
        }

        ReturnReadSlot(slot);
    }

    /// <summary>Completion thread: a READ finished (<paramref name="error"/> null) or failed.</summary>
    private void OnReadCompleted(int slot, Exception? error)
    {
        TaskCompletionSource? completion;
        lock (_sendLock)
        {
            _outstandingSends--;
            completion = _pendingReads[slot];
        }

        if (error is null)
        {
            completion?.TrySetResult();
        }
        else
        {
            completion?.TrySetException(error);
        }
    }

    private void ReturnReadSlot(int slot)
    {
        lock (_sendLock)
        {
            ReturnReadSlotLocked(slot);
        }
    }

    private void ReturnReadSlotLocked(int slot)
    {
        _pendingReads[slot] = null;
        _freeReadSlots.Push(slot);
        _readSlots.Release();
    }

    /// <summary>Fails every READ still waiting (their QP is gone). Any thread.</summary>
    private void FailPendingReads(Exception error)
    {
        TaskCompletionSource?[] pending;
        lock (_sendLock)
        {
            pending = [.. _pendingReads];
        }

        foreach (TaskCompletionSource? completion in pending)
        {
            completion?.TrySetException(error);
        }
    }

    private void ThrowIfFailed()
    {
        if (_failure is { } failure)
        {
            throw failure;
        }
    }
}
