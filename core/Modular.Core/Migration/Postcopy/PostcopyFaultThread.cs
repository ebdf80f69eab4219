using Modular.Abstractions.Faults;
using Modular.Abstractions.Threading;
using Modular.Core.Memory;
using Modular.Core.Migration.Engine;
using Modular.Core.Migration.Stream;

namespace Modular.Core.Migration.Postcopy;

/// <summary>
/// The destination's fault thread (a dedicated thread): reads faults from the fault backend, moves
/// each page missing -> requested and sends REQ_PAGES_ID / REQ_PAGES on the return path (under the
/// return-path lock), or wakes the waiter when the page has already arrived. Allocation-free on its
/// hot path: faults land in a preallocated array, messages are structs, block names already exist.
/// With a page channel (<see cref="PostcopyPageChannel"/>), a missing page is read from the source
/// into the staging page and placed here instead, without a request; a failed read falls back to
/// REQ_PAGES for that page. Blocks on huge pages (2 MiB hugetlbfs) request whole host pages and never
/// use the page channel (its staging page is one target page).
/// </summary>
internal sealed class PostcopyFaultThread
{
    private readonly PostcopyRam _ram;
    private readonly ReturnPathWriter _returnPath;
    private readonly Action<Exception> _onFailure;
    private volatile PostcopyPageChannel? _pageChannel;
    private readonly PageFault[] _faults = new PageFault[32];
    private readonly Thread _thread;
    private RamBlock? _lastRequestedBlock;
    private volatile bool _stopping;
    private volatile bool _nameEveryBlock;

    /// <param name="ram">The armed RAM.</param>
    /// <param name="returnPath">Where requests go.</param>
    /// <param name="onFailure">Called (on the fault thread) when reading faults or requesting fails.</param>
    /// <param name="pageChannel">The connection's attached page channel, or null: every missing page is requested.</param>
    internal PostcopyFaultThread(PostcopyRam ram, ReturnPathWriter returnPath, Action<Exception> onFailure, PostcopyPageChannel? pageChannel = null)
    {
        _pageChannel = pageChannel;
        _ram = ram;
        _returnPath = returnPath;
        _onFailure = onFailure;
        _thread = new Thread(Run) { IsBackground = true, Name = "postcopy fault" };
    }

    /// <summary>
    /// The connection's attached page channel, or null: every missing page is requested. Set before
    /// the RAM is armed (no fault can arrive earlier). Main incoming task.
    /// </summary>
    internal PostcopyPageChannel? PageChannel
    {
        set => _pageChannel = value;
    }

    /// <summary>
    /// Postcopy recovery: from now on every request names its RAM block (REQ_PAGES_ID). The source's
    /// idea of the last block named may have changed with the requests asked again after a recovery.
    /// Any thread.
    /// </summary>
    internal void NameBlockInEveryRequest() => _nameEveryBlock = true;

    /// <summary>Page requests sent.</summary>
    internal long RequestsSent { get; private set; }

    /// <summary>
    /// Starts the thread. Main incoming task, at ADVISE: starting a thread took about 5 ms here, which
    /// at LISTEN would fall inside the package load, where the guest runs nowhere. Until LISTEN arms
    /// the RAM the thread waits for faults that cannot come yet.
    /// </summary>
    internal void Start() => _thread.Start();

    /// <summary>Stops the thread and waits for it (at most a few seconds). Any thread but the fault thread; idempotent.</summary>
    internal void Stop()
    {
        _stopping = true;
        _pageChannel?.Stop();
        _ram.Backend.Shutdown();
        if (_thread.IsAlive && Thread.CurrentThread != _thread)
        {
            _thread.Join(TimeSpan.FromSeconds(5));
        }
    }

    private void Run()
    {
        // Every missing page's request starts here: run ahead of the bulk threads (real-time where
        // permitted; the thread ends with the migration, so nothing is restored).
        _ = LatencyThreads.RaiseCurrentThread();
        try
        {
            while (!_stopping)
            {
                int count = _ram.Backend.ReadFaults(_faults);
                if (count == 0)
                {
                    return;
                }

                for (int i = 0; i < count; i++)
                {
                    Handle(_faults[i]);
                }
            }
        }
        catch (Exception ex) when (!_stopping)
        {
            _onFailure(ex);
        }
        catch (Exception)
        {
            // Stopping: the connection or backend is going away on purpose.
        }
    }

    /// <summary>
    /// The page request for a fault whose (host-page aligned) offset <see cref="PostcopyRam.OnFault"/>
    /// returned: it names the whole host page (one target page, or a 2 MiB huge page), as REQ_PAGES
    /// when the block is the one last named, else REQ_PAGES_ID. Fault thread; allocation-free.
    /// </summary>
    internal static ReturnPathMessage RequestFor(RamBlock block, ulong offset, RamBlock? lastRequestedBlock) =>
        ReferenceEquals(block, lastRequestedBlock)
            ? ReturnPathMessage.ReqPages(offset, (uint)block.HostPageSize)
            : ReturnPathMessage.ReqPagesId(offset, (uint)block.HostPageSize, block.Name);

    internal void Handle(PageFault fault)
    {
        FaultOutcome outcome = _ram.OnFault(fault.HostAddress, fault.ThreadId, out RamBlock? block, out ulong offset);
        switch (outcome)
        {
            case FaultOutcome.NeedsRequest:
                if (_pageChannel is { } channel && block!.HostPageSize == RamBlock.TargetPageSize && channel.TryRead(block, offset))
                {
                    // Placed like a page from the stream: atomically, waking the waiter, marked
                    // received with its latency recorded; if the stream's copy won, EEXIST is fine.
                    _ram.Place(block!, offset, channel.Page, isZero: false);
                    break;
                }

                _returnPath.Send(RequestFor(block!, offset, _nameEveryBlock ? null : _lastRequestedBlock));
                _lastRequestedBlock = block;
                RequestsSent++;
                break;
            case FaultOutcome.Invalid:
                throw new InvalidOperationException($"A page fault at host address 0x{fault.HostAddress:x} (thread {fault.ThreadId}) lies outside guest RAM; the fault backend reported a range it should not have armed.");
            default:
                // AlreadyRequested: its arrival wakes this waiter too. AlreadyReceived: OnFault woke it.
                break;
        }
    }
}
