using Modular.Abstractions.Devices;

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

    /// <summary>Stops every vCPU and returns once none runs guest code. Any thread except a vCPU thread.</summary>
    void Pause();

    /// <summary>Lets the vCPUs run again after <see cref="Pause"/>. Any thread except a vCPU thread.</summary>
    void Resume();

    /// <summary>The savevm sections that carry the vCPU state (saved and loaded with the vCPUs paused).</summary>
    IReadOnlyList<ISaveVmSection> StateSections { get; }

    /// <summary>
    /// The kernel thread id of each vCPU's thread, by vCPU index (0 for one not started yet), so a
    /// page fault's thread can be told to be a vCPU (postcopy blocktime). A new array each call. Any thread.
    /// </summary>
    int[] VcpuThreadIds();
}
