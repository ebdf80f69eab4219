using Modular.Abstractions.Memory;

namespace Modular.Core.Qmp;

/// <summary>
/// The machine as the QMP commands of <see cref="QmpMachineCommands"/> see it. The machine implements
/// it; every member is called on a QMP read loop thread, one command at a time, so an implementation
/// only needs to be safe against its own vCPU and migration threads.
/// </summary>
/// <remarks>
/// Events are the machine's job, not the command's: it calls <see cref="QmpServer.EmitEvent"/> with
/// <c>STOP</c> when the vCPUs stop (for any reason: <c>stop</c>, migration, a guest shutdown),
/// <c>RESUME</c> when they start again, and <c>SHUTDOWN</c>
/// (<c>{"guest": false, "reason": "host-qmp-quit"}</c> for <c>quit</c>) when it shuts down. Emitting
/// from inside <see cref="Stop"/> or <see cref="Resume"/> makes the event reach clients before the
/// command's <c>{"return": {}}</c>, as QEMU does.
/// </remarks>
public interface IQmpMachine
{
    /// <summary>The run state QEMU would report in <c>query-status</c>.</summary>
    QmpRunState RunState { get; }

    /// <summary>Guest RAM; <c>pmemsave</c> copies it through <see cref="IGuestMemory.Read"/>.</summary>
    IGuestMemory Memory { get; }

    /// <summary>
    /// <c>stop</c>: pause the vCPUs if they run (then emit <c>STOP</c>); do nothing if already
    /// stopped. While <see cref="QmpRunState.InMigrate"/>, only clear "start when the incoming migration ends".
    /// </summary>
    void Stop();

    /// <summary>
    /// <c>cont</c>: start the vCPUs if they are stopped (then emit <c>RESUME</c>); do nothing if they
    /// run. While <see cref="QmpRunState.InMigrate"/>, only set "start when the incoming migration
    /// ends". Not called in states that need a reset or while migration finishes (the command refuses those).
    /// </summary>
    void Resume();

    /// <summary>
    /// <c>quit</c>: request that the process shut down and return at once; the command's reply is
    /// sent after this returns, so the shutdown itself (which disposes the QMP server) must happen
    /// on another thread.
    /// </summary>
    void Quit();
}
