namespace Modular.Core.Qmp;

/// <summary>QEMU's RunState enum (qapi/run-state.json), as <c>query-status</c> reports it.</summary>
public enum QmpRunState
{
    /// <summary>Not a valid state; never reported.</summary>
    Invalid = 0,

    /// <summary><c>debug</c>: stopped by the debugger.</summary>
    Debug,

    /// <summary><c>inmigrate</c>: waiting for an incoming migration.</summary>
    InMigrate,

    /// <summary><c>internal-error</c>: the VMM hit an internal error; a reset is needed.</summary>
    InternalError,

    /// <summary><c>io-error</c>: stopped after an I/O error.</summary>
    IoError,

    /// <summary><c>paused</c>: stopped by <c>stop</c>.</summary>
    Paused,

    /// <summary><c>postmigrate</c>: stopped after an outgoing migration completed.</summary>
    PostMigrate,

    /// <summary><c>prelaunch</c>: created but not started yet.</summary>
    Prelaunch,

    /// <summary><c>finish-migrate</c>: stopped to finish an outgoing migration.</summary>
    FinishMigrate,

    /// <summary><c>restore-vm</c>: loading a snapshot.</summary>
    RestoreVm,

    /// <summary><c>running</c>: the vCPUs run.</summary>
    Running,

    /// <summary><c>save-vm</c>: saving a snapshot.</summary>
    SaveVm,

    /// <summary><c>shutdown</c>: the guest shut down; a reset is needed.</summary>
    Shutdown,

    /// <summary><c>suspended</c>: the guest suspended itself (ACPI S3).</summary>
    Suspended,

    /// <summary><c>watchdog</c>: stopped by a watchdog action.</summary>
    Watchdog,

    /// <summary><c>guest-panicked</c>: the guest reported a panic.</summary>
    GuestPanicked,

    /// <summary><c>colo</c>: COLO fault tolerance checkpointing.</summary>
    Colo,
}

/// <summary>QEMU's spelling of each <see cref="QmpRunState"/>.</summary>
public static class QmpRunStateNames
{
    /// <summary>The name QEMU puts in <c>query-status</c>'s <c>status</c> member.</summary>
    /// <param name="state">A valid state.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="state"/> is <see cref="QmpRunState.Invalid"/> or unknown.</exception>
    public static string ToQapiName(this QmpRunState state) => state switch
    {
        QmpRunState.Debug => "debug",
        QmpRunState.InMigrate => "inmigrate",
        QmpRunState.InternalError => "internal-error",
        QmpRunState.IoError => "io-error",
        QmpRunState.Paused => "paused",
        QmpRunState.PostMigrate => "postmigrate",
        QmpRunState.Prelaunch => "prelaunch",
        QmpRunState.FinishMigrate => "finish-migrate",
        QmpRunState.RestoreVm => "restore-vm",
        QmpRunState.Running => "running",
        QmpRunState.SaveVm => "save-vm",
        QmpRunState.Shutdown => "shutdown",
        QmpRunState.Suspended => "suspended",
        QmpRunState.Watchdog => "watchdog",
        QmpRunState.GuestPanicked => "guest-panicked",
        QmpRunState.Colo => "colo",
        _ => throw new ArgumentOutOfRangeException(nameof(state), state, "The machine reported a run state QMP has no name for."),
    };
}
