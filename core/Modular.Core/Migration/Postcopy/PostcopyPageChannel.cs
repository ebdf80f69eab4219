using Microsoft.Extensions.Logging;
using Modular.Abstractions.Transports;
using Modular.Core.Memory;

namespace Modular.Core.Migration.Postcopy;

/// <summary>
/// The destination's use of a connection's page channel (<see cref="IPageChannel"/>, RDMA READ and
/// the like): the RAM blocks whose source regions were attached from the "x-modular-page-channel"
/// section, and a pinned staging page the fault thread reads a missing page into before placing it.
/// A read that fails is counted and logged once; the fault thread then asks for the page with
/// REQ_PAGES as it would without a page channel.
/// </summary>
/// <remarks>
/// Threads: <see cref="Attach"/> on the main incoming task before LISTEN; <see cref="TryRead"/> and
/// <see cref="Page"/> on the fault thread only (one staging page, one read at a time);
/// <see cref="Stop"/> from whoever stops the fault thread; the counters from the QMP loop.
/// </remarks>
internal sealed class PostcopyPageChannel : IDisposable
{
    private readonly IPageChannel _channel;
    private readonly string _description;
    private readonly ILogger _logger;
    private readonly HashSet<RamBlock> _attached = new(ReferenceEqualityComparer.Instance);
    private readonly byte[] _staging = GC.AllocateArray<byte>(RamBlock.TargetPageSize, pinned: true);
    private readonly Memory<byte> _stagingMemory;
    private readonly CancellationTokenSource _stop = new();
    private long _reads;
    private long _failures;
    private int _failureLogged;

    /// <param name="channel">The connection's page channel.</param>
    /// <param name="description">The connection, for logs (its remote description).</param>
    /// <param name="logger">Where the first read failure is logged.</param>
    internal PostcopyPageChannel(IPageChannel channel, string description, ILogger logger)
    {
        _channel = channel;
        _description = description;
        _logger = logger;
        _stagingMemory = _staging;
    }

    /// <summary>Pages read through the page channel and placed (query-migrate's x-modular-page-channel-reads).</summary>
    internal long Reads => Interlocked.Read(ref _reads);

    /// <summary>Reads that failed and fell back to REQ_PAGES.</summary>
    internal long Failures => Interlocked.Read(ref _failures);

    /// <summary>RAM blocks attached so far.</summary>
    internal int AttachedBlocks => _attached.Count;

    /// <summary>The page the last successful <see cref="TryRead"/> read. Fault thread.</summary>
    internal ReadOnlySpan<byte> Page => _staging;

    /// <summary>Attaches the source's region of <paramref name="block"/>. Main incoming task, before LISTEN.</summary>
    /// <exception cref="TransportException">The transport refused the descriptor.</exception>
    internal void Attach(RamBlock block, byte[] descriptor)
    {
        _channel.AttachRegion(block.Name, descriptor);
        _attached.Add(block);
    }

    /// <summary>
    /// Reads the target page at <paramref name="offset"/> of <paramref name="block"/> into the staging
    /// page (<see cref="Page"/>), waiting for the read. False when the block is not attached or the
    /// read failed (logged once): ask for the page with REQ_PAGES instead. Fault thread; allocates
    /// nothing when the read completes synchronously; an asynchronous read is waited for through
    /// <c>ValueTask.AsTask</c>, which may allocate one Task (a read takes microseconds at best, so
    /// one blocking wait per fault is the simple choice; one read is in flight at a time).
    /// </summary>
    internal bool TryRead(RamBlock block, ulong offset)
    {
        if (!_attached.Contains(block) || _stop.IsCancellationRequested)
        {
            return false;
        }

        try
        {
            ValueTask read = _channel.ReadAsync(block.Name, offset, _stagingMemory, _stop.Token);
            if (!read.IsCompletedSuccessfully)
            {
                read.AsTask().GetAwaiter().GetResult();
            }
        }
        catch (Exception ex) when (!_stop.IsCancellationRequested)
        {
            Interlocked.Increment(ref _failures);
            if (Interlocked.Exchange(ref _failureLogged, 1) == 0)
            {
                _logger.LogWarning(
                    "A page-channel read of RAM block '{Block}' at 0x{Offset:x} from {Connection} failed ({Error}); that page and any later page whose read fails are requested with REQ_PAGES on the return path instead (this is logged once).",
                    block.Name, offset, _description, ex.Message);
            }

            return false;
        }
        catch (Exception)
        {
            // Stopping: the migration is ending or failing; the caller falls back and stops soon.
            return false;
        }

        Interlocked.Increment(ref _reads);
        return true;
    }

    /// <summary>Cancels a read in progress and refuses new ones. Any thread; idempotent.</summary>
    internal void Stop()
    {
        try
        {
            _stop.Cancel();
        }
        catch (ObjectDisposedException)
        {
            // Already disposed: nothing is reading.
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        Stop();
        _stop.Dispose();
    }
}
