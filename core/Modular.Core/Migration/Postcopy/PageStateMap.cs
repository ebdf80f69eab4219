using System.Globalization;

namespace Modular.Core.Migration.Postcopy;

/// <summary>The state of one destination page during postcopy (2 bits in <see cref="PageStateMap"/>).</summary>
public enum PageState : byte
{
    /// <summary>Not yet received or requested.</summary>
    Missing = 0,

    /// <summary>Requested from the source (a fault is waiting for it), not yet received.</summary>
    Requested = 1,

    /// <summary>Received and placed.</summary>
    Received = 2,
}

/// <summary>What the fault thread should do about a fault, from <see cref="PageStateMap.TryRequest"/>.</summary>
public enum FaultOutcome
{
    /// <summary>Not a valid outcome.</summary>
    Invalid = 0,

    /// <summary>The page went missing -> requested: send REQ_PAGES for it.</summary>
    NeedsRequest = 1,

    /// <summary>The page was already requested: do nothing, its arrival wakes this waiter too.</summary>
    AlreadyRequested = 2,

    /// <summary>The page has already been received: wake the waiter without asking again.</summary>
    AlreadyReceived = 3,
}

/// <summary>
/// The destination's page map for one RAM block: 2 bits a page, updated lock-free with
/// compare-and-swap on 64-bit words (32 pages a word). The only transitions, as in the postcopy
/// specification ("Destination side page maps"):
/// <list type="bullet">
/// <item>received -> missing: <see cref="Discard"/>, only during setup (before <see cref="BeginRunning"/>);</item>
/// <item>missing -> received and requested -> received: <see cref="MarkReceived"/>;</item>
/// <item>missing -> requested: <see cref="TryRequest"/>.</item>
/// </list>
/// Calls that find a page already in the state they would move it to change nothing and say so in
/// their result. A move outside this list throws <see cref="PageStateTransitionException"/>, which
/// names the page and both states. All members may be called from any thread concurrently: the
/// fault thread calls <see cref="TryRequest"/> (and <see cref="MarkReceived"/> for a page that was
/// written into shared memory but not mapped yet, which it maps itself), the listen thread <see cref="MarkReceived"/>, the
/// main incoming thread <see cref="Discard"/> and <see cref="BeginRunning"/>.
/// </summary>
public sealed class PageStateMap
{
    private const int BitsPerPage = 2;
    private const int PagesPerWord = 64 / BitsPerPage;
    private const ulong StateMask = 0b11;

    private readonly ulong[] _words;
    private long _requested;
    private long _received;
    private volatile bool _running;

    /// <summary>Creates a map with every page missing.</summary>
    /// <param name="pageCount">The number of pages in the RAM block.</param>
    public PageStateMap(ulong pageCount)
    {
        PageCount = pageCount;
        _words = new ulong[checked((long)((pageCount + PagesPerWord - 1) / PagesPerWord))];
    }

    /// <summary>The number of pages the map covers.</summary>
    public ulong PageCount { get; }

    /// <summary>True once <see cref="BeginRunning"/> has sealed the map against discards.</summary>
    public bool IsRunning => _running;

    /// <summary>Pages currently requested and not yet received.</summary>
    public ulong RequestedCount => (ulong)Interlocked.Read(ref _requested);

    /// <summary>Pages received.</summary>
    public ulong ReceivedCount => (ulong)Interlocked.Read(ref _received);

    /// <summary>Pages neither requested nor received (a snapshot; other threads may be moving pages).</summary>
    public ulong MissingCount => PageCount - ReceivedCount - RequestedCount;

    /// <summary>True when every page has been received.</summary>
    public bool IsComplete => ReceivedCount == PageCount;

    /// <summary>
    /// Seals the map for running: from now on <see cref="Discard"/> is refused. Called once the
    /// discard commands are applied (at LISTEN at the latest). Idempotent. Main incoming thread.
    /// </summary>
    public void BeginRunning() => _running = true;

    /// <summary>The current state of <paramref name="page"/>.</summary>
    /// <param name="page">Page index within the block.</param>
    public PageState GetState(ulong page)
    {
        CheckPage(page);
        return Decode(Volatile.Read(ref _words[page / PagesPerWord]), page);
    }

    /// <summary>
    /// A fault arrived for <paramref name="page"/>: missing -> requested, or nothing when it is
    /// already requested or received. Fault thread; lock-free, allocation-free.
    /// </summary>
    /// <param name="page">Page index within the block.</param>
    /// <returns>Whether to send a request, do nothing, or just wake the waiter.</returns>
    public FaultOutcome TryRequest(ulong page)
    {
        CheckPage(page);
        PageState previous = Update(page, static state => state == PageState.Missing ? PageState.Requested : state);
        switch (previous)
        {
            case PageState.Missing:
                Interlocked.Increment(ref _requested);
                return FaultOutcome.NeedsRequest;
            case PageState.Requested:
                return FaultOutcome.AlreadyRequested;
            default:
                return FaultOutcome.AlreadyReceived;
        }
    }

    /// <summary>
    /// <paramref name="page"/> arrived and was placed: missing -> received or requested -> received.
    /// A page that was already received stays so (the page came twice; nothing changes). Listen
    /// thread (or the main incoming thread during precopy); lock-free, allocation-free.
    /// </summary>
    /// <param name="page">Page index within the block.</param>
    /// <returns>The state before the call; <see cref="PageState.Received"/> means it came twice.</returns>
    public PageState MarkReceived(ulong page)
    {
        CheckPage(page);
        PageState previous = Update(page, static _ => PageState.Received);
        if (previous == PageState.Requested)
        {
            Interlocked.Decrement(ref _requested);
        }
        if (previous != PageState.Received)
        {
            Interlocked.Increment(ref _received);
        }
        return previous;
    }

    /// <summary>
    /// Discards <paramref name="page"/> (POSTCOPY_RAM_DISCARD): received -> missing; a missing page
    /// stays missing. Main incoming thread, before <see cref="BeginRunning"/>.
    /// </summary>
    /// <param name="page">Page index within the block.</param>
    /// <returns>The state before the call.</returns>
    /// <exception cref="PageStateTransitionException">
    /// The map is already running, or the page is requested (a fault is waiting for it).
    /// </exception>
    public PageState Discard(ulong page)
    {
        CheckPage(page);
        if (_running)
        {
            throw new PageStateTransitionException(page, GetState(page), PageState.Missing,
                "discarding is only allowed during setup, before postcopy runs");
        }
        PageState previous = Update(page, static state => state == PageState.Received ? PageState.Missing : state);
        if (previous == PageState.Requested)
        {
            throw new PageStateTransitionException(page, previous, PageState.Missing,
                "a requested page has a fault waiting for it and must be received, not discarded");
        }
        if (previous == PageState.Received)
        {
            Interlocked.Decrement(ref _received);
        }
        return previous;
    }

    /// <summary>Discards <paramref name="count"/> pages from <paramref name="firstPage"/> (see <see cref="Discard"/>).</summary>
    /// <param name="firstPage">First page index.</param>
    /// <param name="count">Number of pages.</param>
    public void DiscardRange(ulong firstPage, ulong count)
    {
        if (count > PageCount || firstPage > PageCount - count)
        {
            throw new ArgumentOutOfRangeException(nameof(count),
                string.Create(CultureInfo.InvariantCulture, $"Pages {firstPage}..{firstPage + count} are outside the page map of {PageCount} pages."));
        }
        for (ulong page = firstPage; page < firstPage + count; page++)
        {
            Discard(page);
        }
    }

    /// <summary>Applies <paramref name="next"/> to the page's state atomically; returns the state before.</summary>
    private PageState Update(ulong page, Func<PageState, PageState> next)
    {
        ref ulong word = ref _words[page / PagesPerWord];
        int shift = (int)(page % PagesPerWord) * BitsPerPage;
        while (true)
        {
            ulong observed = Volatile.Read(ref word);
            PageState current = Decode(observed, page);
            PageState wanted = next(current);
            if (wanted == current)
            {
                return current;
            }
            ulong replacement = (observed & ~(StateMask << shift)) | ((ulong)wanted << shift);
            if (Interlocked.CompareExchange(ref word, replacement, observed) == observed)
            {
                return current;
            }
        }
    }

    private static PageState Decode(ulong word, ulong page)
    {
        ulong bits = (word >> ((int)(page % PagesPerWord) * BitsPerPage)) & StateMask;
        if (bits == StateMask)
        {
            throw new InvalidOperationException(
                string.Create(CultureInfo.InvariantCulture, $"Page {page} has the invalid page-map state 3; the page map is corrupt."));
        }
        return (PageState)bits;
    }

    private void CheckPage(ulong page)
    {
        if (page >= PageCount)
        {
            throw new ArgumentOutOfRangeException(nameof(page),
                string.Create(CultureInfo.InvariantCulture, $"Page {page} is outside the page map of {PageCount} pages."));
        }
    }
}

/// <summary>A page-map transition that the postcopy specification does not allow was attempted.</summary>
public sealed class PageStateTransitionException : InvalidOperationException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="page">The page index.</param>
    /// <param name="from">The page's state.</param>
    /// <param name="to">The state it was asked to move to.</param>
    /// <param name="why">Why the move is refused.</param>
    public PageStateTransitionException(ulong page, PageState from, PageState to, string why)
        : base(string.Create(CultureInfo.InvariantCulture, $"Page {page} cannot go from {from} to {to}: {why}."))
    {
        Page = page;
        From = from;
        To = to;
    }

    /// <summary>The page index.</summary>
    public ulong Page { get; }

    /// <summary>The page's state.</summary>
    public PageState From { get; }

    /// <summary>The refused target state.</summary>
    public PageState To { get; }
}
