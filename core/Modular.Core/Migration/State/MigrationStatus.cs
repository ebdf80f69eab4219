namespace Modular.Core.Migration.State;

/// <summary>
/// A migration's status, with QEMU's names (query-migrate's <c>status</c>, the MIGRATION event).
/// </summary>
/// <remarks>
/// Legal moves (anything else is refused by <see cref="MigrationStatusMachine"/>):
/// <code>
///   none ──► setup ──► active ──► postcopy-active ──► completed
///             │          │   └──────────────────────► completed
///             │          ├──► cancelling ──► cancelled
///             │          │        (source only; also from setup)
///             └──────────┴──► failed ◄── postcopy-active
///   with pause-before-switchover (source only):
///             active ──► pre-switchover ──► device ──► completed
///                              └──────────► postcopy-active
///   (pre-switchover and device may also go to cancelling or failed)
///   with x-modular-postcopy-recovery (both sides), when the connection fails in postcopy:
///             postcopy-active ──► postcopy-paused ──► postcopy-recover ──► postcopy-active
///                                  ▲    │                   │
///                                  │    └──► failed         ├──► failed
///                                  └────────────────────────┘ (the recovery's connection failed too)
/// </code>
/// The destination goes none ──► setup ──► active ──► (postcopy-active) ──► completed | failed.
/// </remarks>
public enum MigrationStatus
{
    /// <summary>No migration has started.</summary>
    None = 0,

    /// <summary>Connecting and sending or reading the setup sections.</summary>
    Setup = 1,

    /// <summary>Precopy: RAM is being copied while the guest runs.</summary>
    Active = 2,

    /// <summary>Postcopy: the destination runs the guest; pages still flow.</summary>
    PostcopyActive = 3,

    /// <summary>Everything arrived; the destination owns the guest.</summary>
    Completed = 4,

    /// <summary>The migration failed; the error says why.</summary>
    Failed = 5,

    /// <summary>migrate_cancel was asked for and is taking effect.</summary>
    Cancelling = 6,

    /// <summary>The migration was cancelled; the source keeps running.</summary>
    Cancelled = 7,

    /// <summary>pause-before-switchover: the vCPUs are stopped and the source waits for migrate-continue.</summary>
    PreSwitchover = 8,

    /// <summary>pause-before-switchover, after migrate-continue: the rest of RAM and the device state are being sent.</summary>
    Device = 9,

    /// <summary>Postcopy recovery (x-modular-postcopy-recovery): the connection failed during postcopy; both sides keep the guest's state and wait (source: migrate with resume, destination: migrate-recover).</summary>
    PostcopyPaused = 10,

    /// <summary>Postcopy recovery: a new connection is up and the two sides are agreeing on which pages the destination still lacks.</summary>
    PostcopyRecover = 11,
}

/// <summary>QEMU's spelling of each <see cref="MigrationStatus"/>.</summary>
public static class MigrationStatusNames
{
    /// <summary>The status as QMP spells it (<c>postcopy-active</c>).</summary>
    /// <param name="status">The status.</param>
    public static string ToQmp(this MigrationStatus status) => status switch
    {
        MigrationStatus.None => "none",
        MigrationStatus.Setup => "setup",
        MigrationStatus.Active => "active",
        MigrationStatus.PostcopyActive => "postcopy-active",
        MigrationStatus.Completed => "completed",
        MigrationStatus.Failed => "failed",
        MigrationStatus.Cancelling => "cancelling",
        MigrationStatus.Cancelled => "cancelled",
        MigrationStatus.PreSwitchover => "pre-switchover",
        MigrationStatus.Device => "device",
        MigrationStatus.PostcopyPaused => "postcopy-paused",
        MigrationStatus.PostcopyRecover => "postcopy-recover",
        _ => throw new ArgumentOutOfRangeException(nameof(status), status, "not a migration status"),
    };
}

/// <summary>An illegal state move was asked for. The message names both states.</summary>
public sealed class IllegalTransitionException : InvalidOperationException
{
    /// <summary>Creates the exception.</summary>
    public IllegalTransitionException() { }

    /// <summary>Creates the exception with a message.</summary>
    /// <param name="message">Names both states.</param>
    public IllegalTransitionException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and cause.</summary>
    /// <param name="message">Names both states.</param>
    /// <param name="innerException">The cause.</param>
    public IllegalTransitionException(string message, Exception innerException) : base(message, innerException) { }
}

/// <summary>
/// Holds one migration's status and moves it only along legal edges; every move is atomic and
/// raises <see cref="Changed"/> (which feeds the MIGRATION event). Any thread.
/// </summary>
public sealed class MigrationStatusMachine
{
    private int _status;

    /// <summary>Raised after every move, with the new status, on the thread that moved it.</summary>
    public event Action<MigrationStatus>? Changed;

    /// <summary>The current status.</summary>
    public MigrationStatus Current => (MigrationStatus)Volatile.Read(ref _status);

    /// <summary>True in completed, failed and cancelled.</summary>
    public bool IsFinished => Current is MigrationStatus.Completed or MigrationStatus.Failed or MigrationStatus.Cancelled;

    /// <summary>True when moving from <paramref name="from"/> to <paramref name="to"/> is legal.</summary>
    /// <param name="from">The current status.</param>
    /// <param name="to">The wanted status.</param>
    public static bool IsLegal(MigrationStatus from, MigrationStatus to) => (from, to) switch
    {
        (MigrationStatus.None or MigrationStatus.Completed or MigrationStatus.Failed or MigrationStatus.Cancelled, MigrationStatus.Setup) => true,
        (MigrationStatus.Setup, MigrationStatus.Active or MigrationStatus.Failed or MigrationStatus.Cancelling) => true,
        (MigrationStatus.Active, MigrationStatus.PostcopyActive or MigrationStatus.Completed or MigrationStatus.Failed or MigrationStatus.Cancelling or MigrationStatus.PreSwitchover) => true,
        (MigrationStatus.PreSwitchover, MigrationStatus.Device or MigrationStatus.PostcopyActive or MigrationStatus.Failed or MigrationStatus.Cancelling) => true,
        (MigrationStatus.Device, MigrationStatus.Completed or MigrationStatus.Failed or MigrationStatus.Cancelling) => true,
        (MigrationStatus.PostcopyActive, MigrationStatus.Completed or MigrationStatus.Failed or MigrationStatus.PostcopyPaused) => true,
        (MigrationStatus.PostcopyPaused, MigrationStatus.PostcopyRecover or MigrationStatus.Failed) => true,
        (MigrationStatus.PostcopyRecover, MigrationStatus.PostcopyActive or MigrationStatus.PostcopyPaused or MigrationStatus.Failed) => true,
        (MigrationStatus.Cancelling, MigrationStatus.Cancelled or MigrationStatus.Failed) => true,
        _ => false,
    };

    /// <summary>Moves to <paramref name="to"/>, or throws naming both states.</summary>
    /// <param name="to">The wanted status.</param>
    /// <exception cref="IllegalTransitionException">The move is not legal from the current status.</exception>
    public void MoveTo(MigrationStatus to)
    {
        if (!TryMoveTo(to, out MigrationStatus from))
        {
            throw new IllegalTransitionException($"Migration status cannot move from '{from.ToQmp()}' to '{to.ToQmp()}'.");
        }
    }

    /// <summary>Moves to <paramref name="to"/> when legal; returns false (and the status seen) when not.</summary>
    /// <param name="to">The wanted status.</param>
    /// <param name="from">The status seen.</param>
    public bool TryMoveTo(MigrationStatus to, out MigrationStatus from)
    {
        while (true)
        {
            int seen = Volatile.Read(ref _status);
            from = (MigrationStatus)seen;
            if (!IsLegal(from, to))
            {
                return false;
            }

            if (Interlocked.CompareExchange(ref _status, (int)to, seen) == seen)
            {
                Changed?.Invoke(to);
                return true;
            }
        }
    }

    /// <summary>Moves from exactly <paramref name="expected"/> to <paramref name="to"/>; false if the status was something else.</summary>
    /// <param name="expected">The status the caller believes is current.</param>
    /// <param name="to">The wanted status.</param>
    public bool TryMoveFrom(MigrationStatus expected, MigrationStatus to)
    {
        if (!IsLegal(expected, to))
        {
            throw new IllegalTransitionException($"Migration status cannot move from '{expected.ToQmp()}' to '{to.ToQmp()}'.");
        }

        if (Interlocked.CompareExchange(ref _status, (int)to, (int)expected) != (int)expected)
        {
            return false;
        }

        Changed?.Invoke(to);
        return true;
    }
}
