using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using Modular.Core.Qmp;
using Modular.Core.Vcpus;

namespace Modular.Core.Machine;

/// <summary>Run state: start, stop, continue, quit, and how the guest ends.</summary>
public sealed partial class VirtualMachine
{
    /// <summary>
    /// Starts the machine after <see cref="Create"/>: runs the guest unless it was configured paused
    /// (QEMU's -S) or waits for an incoming migration.
    /// </summary>
    public void Start()
    {
        lock (_stateGate)
        {
            if (_runState != QmpRunState.Prelaunch || Config.Machine.Paused)
            {
                return;
            }
        }

        Resume();
    }

    /// <inheritdoc />
    public void Stop() => StopAs(QmpRunState.Paused);

    /// <summary>
    /// Stops the vCPUs and enters <paramref name="state"/> (paused, finish-migrate, ...); emits STOP if
    /// they were running. Returns when no vCPU runs guest code. Any thread but a vCPU thread.
    /// </summary>
    /// <param name="state">The run state to enter.</param>
    /// <param name="wait">How to wait for each vCPU to park (<see cref="ParkWait"/>).</param>
    public void StopAs(QmpRunState state, ParkWait wait = ParkWait.Spin)
    {
        bool wasRunning;
        lock (_stateGate)
        {
            if (_runState == QmpRunState.InMigrate)
            {
                _startWhenIncomingEnds = false;
                return;
            }

            wasRunning = _runState == QmpRunState.Running;
            Accelerator.Pause(wait);
            if (_runState is QmpRunState.Running or QmpRunState.Paused or QmpRunState.Prelaunch or QmpRunState.FinishMigrate or QmpRunState.PostMigrate)
            {
                _runState = state;
            }
        }

        if (wasRunning)
        {
            Emit("STOP");
        }
    }

    /// <summary>
    /// Runs the vCPUs' part of <see cref="StopAs"/> and <see cref="Resume"/> once, ahead of a
    /// migration's switch, without changing the run state or emitting events: the vCPUs are kicked,
    /// park, <paramref name="whileStopped"/> runs, and they run on (a pause of a fraction of a
    /// millisecond, as when the host preempts their threads). A process's first stop binds the call
    /// sites and stubs on its way (ReadyToRun code resolves each on its first call): measured at the
    /// postcopy switch, the kick went out 0.14-0.30 ms after the stop began, which a switch
    /// otherwise pays inside its downtime. Does nothing unless the guest runs. Any thread but a vCPU
    /// thread.
    /// </summary>
    /// <param name="whileStopped">Runs while the vCPUs are parked (the switch's own work, say, on scratch output), or null.</param>
    /// <param name="wait">How the switch will wait for the vCPUs to park, so that the same code is bound (<see cref="ParkWait"/>).</param>
    public void RehearseStop(Action? whileStopped = null, ParkWait wait = ParkWait.Spin)
    {
        lock (_stateGate)
        {
            if (_runState != QmpRunState.Running)
            {
                return;
            }

            Accelerator.Pause(wait);
            try
            {
                whileStopped?.Invoke();
            }
            finally
            {
                Accelerator.Resume();
            }
        }
    }

    /// <inheritdoc />
    public void Resume()
    {
        lock (_stateGate)
        {
            if (_runState == QmpRunState.InMigrate)
            {
                _startWhenIncomingEnds = true;
                return;
            }

            if (_runState is QmpRunState.Running or QmpRunState.Shutdown or QmpRunState.InternalError)
            {
                return;
            }

            _runState = QmpRunState.Running;
            Accelerator.Resume();
        }

        Emit("RESUME");
    }

    /// <summary>
    /// An incoming migration waits: create the vCPU threads now, parked, so that starting the guest
    /// at its end does not wait for new threads (<see cref="IAccelerator.PrepareToStart"/>). Any thread but a vCPU's.
    /// </summary>
    public void PrepareIncomingStart() => Accelerator.PrepareToStart();

    /// <summary>
    /// An incoming migration has loaded everything: leave inmigrate and run the guest unless the
    /// machine was started paused (or <c>stop</c> came meanwhile). Destination main incoming thread.
    /// </summary>
    /// <returns>True when the guest was started.</returns>
    public bool CompleteIncoming()
    {
        bool start;
        lock (_stateGate)
        {
            start = _startWhenIncomingEnds;
            _runState = QmpRunState.Paused;
        }

        if (start)
        {
            Resume();
        }

        return start;
    }

    /// <summary>Enters a run state without touching the vCPUs (e.g. postmigrate after a completed outgoing migration).</summary>
    /// <param name="state">The state.</param>
    public void SetRunState(QmpRunState state)
    {
        lock (_stateGate)
        {
            _runState = state;
        }
    }

    /// <inheritdoc />
    public void Quit() => RequestExit(0, "host-qmp-quit", guest: false);

    /// <summary>Ends the machine: stops the vCPUs, emits SHUTDOWN, and completes <see cref="Exited"/> with <paramref name="exitCode"/>.</summary>
    /// <param name="exitCode">The process exit code.</param>
    /// <param name="reason">QEMU's SHUTDOWN reason (host-qmp-quit, guest-shutdown, host-signal, ...).</param>
    /// <param name="guest">True when the guest asked for it.</param>
    public void RequestExit(int exitCode, string reason, bool guest = true)
    {
        lock (_stateGate)
        {
            if (_runState == QmpRunState.Shutdown)
            {
                return;
            }

            _runState = QmpRunState.Shutdown;
        }

        // A vCPU thread may be the caller (debug-exit): never wait for vCPUs here; the process owner
        // disposes the machine, which stops them.
        Emit("SHUTDOWN", new JsonObject { ["guest"] = guest, ["reason"] = reason });
        _exit.TrySetResult(exitCode);
    }

    private void OnGuestHalted() => _logger.LogInformation("The guest halted; it stays halted until reset or quit.");

    private void OnFatal(string reason)
    {
        FatalError = reason;
        lock (_stateGate)
        {
            _runState = QmpRunState.InternalError;
        }

        Emit("STOP");
        _exit.TrySetResult(1);
    }
}
