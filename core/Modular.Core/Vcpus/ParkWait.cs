namespace Modular.Core.Vcpus;

/// <summary>How <see cref="VcpuThread.Pause(ParkWait)"/> waits for the kicked vCPU to park.</summary>
public enum ParkWait
{
    /// <summary>
    /// Spin up to 5 ms, then block: the vCPU parks 0.1-0.2 ms after the kick, and a fair waiter
    /// blocked in a wait took up to 2.5 ms to get a core back on this 2-core host.
    /// </summary>
    Spin,

    /// <summary>
    /// Spin 40 µs (a running vCPU leaves the guest and parks in 15-35 µs); if it has not parked by
    /// then its thread is waiting for a core, so move it to the caller's CPU and block until it parks,
    /// which frees that CPU for it; then give the vCPU thread its CPU mask back. For a real-time
    /// caller (the postcopy switch, <see cref="Migration.Engine.SwitchPriority"/>), whose spinning
    /// would keep the vCPU off a shared core and whose wake-up is prompt.
    /// </summary>
    LendCpu,
}
