using System.Diagnostics;
using System.Net.Sockets;

namespace Modular.Transports.Shared;

/// <summary>
/// Takes turns at a tcp socket's lock between the bulk direction and latency-critical calls the
/// other way. Linux holds one lock per tcp socket (lock_sock) for a whole recvmsg or sendmsg, both
/// directions alike: a bulk recvmsg keeps it while data keeps arriving, until its buffer is full,
/// and a bulk sendmsg while the send buffer takes more. A call the other way sleeps until then, and
/// when the lock is let go the bulk thread, already running, usually takes it again before the
/// sleeper gets a core.
/// </summary>
/// <remarks>
/// <para>Measured on this 2-core host (tcp, postcopy of a 1 GiB guest): the destination's fault
/// thread waited in send(2) for its page request 0.1-4 ms, asleep on the lock of the main
/// connection while the listen thread received background pages into 256 KiB buffers (each
/// recvmsg about 0.7 ms); it lost the lock again after each one. The source's return-path thread
/// waited the same way, 0.1-0.2 ms, behind the bulk sendmsg. Unix sockets have no such shared lock
/// (a sender only takes the peer's queue lock, briefly), so they need none of this.</para>
/// <para>How: a latency call marks itself (<see cref="Enter"/>) before it goes into the kernel and
/// unmarks after. The bulk thread, before each call (<see cref="BeforeBulkCall"/>), lets a marked
/// call go first (blocking, 2 ms at most), and for 50 ms after the last latency call moves at most
/// <see cref="SmallCall"/> bytes per call, so the lock is let go often while requests come.</para>
/// <para>Effect, pooled over 20 alternating runs of the bench's postcopy row over tcp (page requests
/// after each run's first): median 107 and 83 us against 119 and 115 us, p90 246-251 us against
/// 344-515 us, p99 2.6-3.3 ms against 3.7-3.8 ms; postcopy took about 6 % longer (the background
/// pages move in smaller receives while requests come). <c>MODULAR_SOCKET_LOCK_TURNS=off</c> turns it
/// off, for comparison.</para>
/// <para>Threads: any number of latency threads; one bulk thread.</para>
/// </remarks>
internal sealed class SocketLockTurns
{
    /// <summary>Bytes per bulk call while latency calls come: a recvmsg or sendmsg of this holds the lock some tens of microseconds.</summary>
    internal const int SmallCall = 64 * 1024;

    private readonly long _window;       // Stopwatch ticks after the last latency call during which bulk calls stay small
    private readonly TimeSpan _maxWait;  // the longest a bulk call waits for a marked latency call
    private long _waits;
    private long _smallCalls;

    /// <summary>Turns with the defaults: small bulk calls for 50 ms after a latency call, a wait of at most 2 ms.</summary>
    internal SocketLockTurns()
        : this(TimeSpan.FromMilliseconds(50), TimeSpan.FromMilliseconds(2))
    {
    }

    /// <param name="window">How long after the last latency call bulk calls stay small.</param>
    /// <param name="maxWait">The longest a bulk call waits for a marked latency call.</param>
    internal SocketLockTurns(TimeSpan window, TimeSpan maxWait)
    {
        _window = (long)(window.TotalSeconds * Stopwatch.Frequency);
        _maxWait = maxWait;
    }

    private readonly Lock _gate = new();
    private readonly ManualResetEventSlim _noneWaiting = new(initialState: true, spinCount: 1);
    private int _pending;
    private long _lastLatencyCall = long.MinValue / 2;

    /// <summary>Whether taking turns is on (on unless MODULAR_SOCKET_LOCK_TURNS=off, which is for comparison).</summary>
    internal static bool Enabled { get; } = !string.Equals(Environment.GetEnvironmentVariable("MODULAR_SOCKET_LOCK_TURNS"), "off", StringComparison.OrdinalIgnoreCase);

    /// <summary>Turns for <paramref name="socket"/>: null where the directions do not share a lock (unix), or when off.</summary>
    internal static SocketLockTurns? For(Socket socket) =>
        Enabled && socket.AddressFamily is AddressFamily.InterNetwork or AddressFamily.InterNetworkV6 ? new SocketLockTurns() : null;

    /// <summary>A latency call is about to enter the kernel. Pair with <see cref="Exit"/>.</summary>
    internal void Enter()
    {
        lock (_gate)
        {
            if (++_pending == 1)
            {
                _noneWaiting.Reset();
            }
        }
    }

    /// <summary>The latency call returned.</summary>
    internal void Exit()
    {
        Volatile.Write(ref _lastLatencyCall, Stopwatch.GetTimestamp());
        lock (_gate)
        {
            if (--_pending == 0)
            {
                _noneWaiting.Set();
            }
        }
    }

    /// <summary>Bulk calls that waited for a marked latency call (for tests and logs).</summary>
    internal long Waits => Interlocked.Read(ref _waits);

    /// <summary>Bulk calls told to move at most <see cref="SmallCall"/> bytes (for tests and logs).</summary>
    internal long SmallCalls => Interlocked.Read(ref _smallCalls);

    /// <summary>
    /// The bulk thread, before each call: lets a marked latency call go first (waiting at most the
    /// constructor's maxWait), then says how many bytes this call should move at most.
    /// </summary>
    /// <remarks>
    /// The wait blocks rather than yields: the latency thread may be queued behind another bulk
    /// thread on the other core, and only a core that goes idle takes it over (a yielding thread
    /// keeps its core busy: measured, the fault thread then waited the whole 2 ms).
    /// </remarks>
    /// <param name="usual">What the call would move otherwise.</param>
    internal int BeforeBulkCall(int usual)
    {
        if (Volatile.Read(ref _pending) > 0)
        {
            _ = _noneWaiting.Wait(_maxWait);
            Interlocked.Increment(ref _waits);
        }
        else if (Stopwatch.GetTimestamp() - Volatile.Read(ref _lastLatencyCall) >= _window)
        {
            return usual;
        }

        Interlocked.Increment(ref _smallCalls);
        return Math.Min(usual, SmallCall);
    }
}
