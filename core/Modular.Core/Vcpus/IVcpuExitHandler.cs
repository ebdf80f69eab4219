using Modular.Abstractions.Memory;

namespace Modular.Core.Vcpus;

/// <summary>
/// Receives a vCPU's exits. Every method runs on that vCPU's thread, between two KVM_RUN calls;
/// the spans point into struct kvm_run and are valid only during the call.
/// </summary>
public interface IVcpuExitHandler
{
    /// <summary>A port read (IN, or one element of INS): fill <paramref name="data"/> (1, 2 or 4 bytes).</summary>
    void PortIn(ushort port, Span<byte> data);

    /// <summary>A port write (OUT, or one element of OUTS).</summary>
    void PortOut(ushort port, ReadOnlySpan<byte> data);

    /// <summary>An MMIO read outside guest RAM: fill <paramref name="data"/> (1-8 bytes).</summary>
    void MmioRead(GuestPhysicalAddress address, Span<byte> data);

    /// <summary>An MMIO write outside guest RAM.</summary>
    void MmioWrite(GuestPhysicalAddress address, ReadOnlySpan<byte> data);

    /// <summary>The guest executed HLT (no in-kernel irqchip). The vCPU then parks until <see cref="VcpuThread.Resume"/>.</summary>
    void OnHalt(int vcpu);

    /// <summary>The vCPU cannot go on (triple fault, failed entry, internal error, a failing handler); its thread ends after this call.</summary>
    void OnShutdown(int vcpu, string reason);
}

/// <summary>Where a <see cref="VcpuThread"/> is in its life.</summary>
public enum VcpuRunState
{
    /// <summary>Not a valid state.</summary>
    Invalid = 0,

    /// <summary>Constructed, thread not started.</summary>
    Created = 1,

    /// <summary>In or around KVM_RUN.</summary>
    Running = 2,

    /// <summary>Parked by <see cref="VcpuThread.Pause"/>, out of KVM_RUN.</summary>
    Paused = 3,

    /// <summary>Parked after the guest executed HLT.</summary>
    Halted = 4,

    /// <summary>The thread has ended (Stop, shutdown or failure; see <see cref="VcpuThread.ExitReason"/>).</summary>
    Stopped = 5,
}
