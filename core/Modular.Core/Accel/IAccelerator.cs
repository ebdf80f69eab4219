using Modular.Abstractions.Devices;
using Modular.Core.Vcpus;

namespace Modular.Core.Accel;

/// <summary>
/// What runs the guest: KVM vCPUs, or the synthetic workload. The machine drives it; the migration
/// engine pauses it and saves its state sections.
/// </summary>
internal interface IAccelerator : IDisposable
{
    /// <summary>A one-line description for logs and <c>modular run</c> output (says "synthetic" honestly).</summary>
    string Description { get; }

    /// <summary>True between <see cref="Start"/>/<see cref="Resume"/> and <see cref="Pause"/>.</summary>
    bool IsRunning { get; }

    /// <summary>Starts running the guest for the first time. QMP loop or main thread.</summary>
    void Start();

    /// <summary>
    /// Creates the vCPU threads ahead, parked before their first entry into the guest, so that the
    /// later <see cref="Start"/> (or <see cref="Resume"/>) only wakes them. An incoming migration
    /// calls it while it waits: starting a thread waits until the new thread runs, which took 1-3 ms
    /// here at the end of a postcopy package load (waking the parked thread: under 0.1 ms in most
    /// runs), inside the time the guest runs nowhere. The vCPUs' state may still be loaded
    /// afterwards. Idempotent; does nothing once started. Not on a vCPU thread.
    /// </summary>
    void PrepareToStart();

    /// <summary>Stops every vCPU and returns once none runs guest code. Any thread except a vCPU thread.</summary>
    /// <param name="wait">How to wait for each vCPU to park (<see cref="ParkWait"/>).</param>
    void Pause(ParkWait wait = ParkWait.Spin);

    /// <summary>Lets the vCPUs run again after <see cref="Pause"/>. Any thread except a vCPU thread.</summary>
    void Resume();

    /// <summary>
    /// Makes every running vCPU (or whatever stands in for them) sleep for <paramref name="sleep"/>
    /// outside the guest as soon as it can, then run on: one slice of CPU throttling
    /// (<see cref="Machine.CpuThrottle"/>). Any thread; nothing happens while paused.
    /// </summary>
    void Throttle(TimeSpan sleep);

    /// <summary>The savevm sections that carry the vCPU state (saved and loaded with the vCPUs paused).</summary>
    IReadOnlyList<ISaveVmSection> StateSections { get; }

    /// <summary>
    /// The kernel thread id of each vCPU's thread, by vCPU index (0 for one not started yet), so a
    /// page fault's thread can be told to be a vCPU (postcopy blocktime). A new array each call. Any thread.
    /// </summary>
    int[] VcpuThreadIds();
}
