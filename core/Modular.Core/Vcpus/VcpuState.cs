using Modular.Core.Interop;

namespace Modular.Core.Vcpus;

/// <summary>
/// Everything KVM holds for one x86-64 vCPU, as captured by <see cref="Kvm.KvmVcpu.CaptureState"/>
/// and restored by <see cref="Kvm.KvmVcpu.RestoreState"/>. Serializes to a versioned, length-checked
/// byte format (<see cref="WriteTo(Span{byte})"/>, <see cref="ReadFrom(ReadOnlySpan{byte})"/>) that a
/// savevm section can carry as its payload.
/// </summary>
public sealed partial record VcpuState
{
    /// <summary>The vCPU index this state belongs to.</summary>
    public int VcpuId { get; init; }

    /// <summary>The CPUID table from KVM_GET_CPUID2 (restored first).</summary>
    public KvmCpuidEntry2[] Cpuid { get; init; } = [];

    /// <summary>General-purpose registers, RIP, RFLAGS.</summary>
    public KvmRegs Regs { get; init; }

    /// <summary>Segments, descriptor tables, control registers, EFER, APIC base.</summary>
    public KvmSregs Sregs { get; init; }

    /// <summary>Legacy FPU/SSE state (xsave supersedes it; kept for completeness).</summary>
    public KvmFpu Fpu { get; init; }

    /// <summary>The KVM_GET_XSAVE2 area (at least 4096 bytes).</summary>
    public byte[] Xsave { get; init; } = [];

    /// <summary>Extended control registers (XCR0).</summary>
    public KvmXcrs Xcrs { get; init; }

    /// <summary>The MSRs of KVM_GET_MSR_INDEX_LIST that could be read.</summary>
    public KvmMsrEntry[] Msrs { get; init; } = [];

    /// <summary>Runnable, halted, waiting for SIPI, ...</summary>
    public KvmMpState MpState { get; init; }

    /// <summary>Pending exceptions, interrupts, NMI and SMI state.</summary>
    public KvmVcpuEvents Events { get; init; }

    /// <summary>DR0-DR3, DR6, DR7.</summary>
    public KvmDebugRegs DebugRegs { get; init; }
}

/// <summary>vCPU state bytes that cannot be read: wrong magic, unknown version, or truncated. The message says which part and where.</summary>
public sealed class VcpuStateFormatException : Exception
{
    /// <summary>Creates the exception.</summary>
    public VcpuStateFormatException(string message)
        : base(message)
    {
    }
}
