using Modular.Core.Vcpus;

namespace Modular.Core.Kvm;

/// <summary>Whole-vCPU state capture and restore. The vCPU must be paused (out of KVM_RUN).</summary>
public sealed partial class KvmVcpu
{
    /// <summary>
    /// Reads everything a migration needs: regs, sregs, FPU, xsave, XCRs, the MSRs of
    /// KVM_GET_MSR_INDEX_LIST, MP state, vCPU events, debug registers and the CPUID table.
    /// Call from the vCPU's thread or while its <see cref="VcpuThread"/> is paused.
    /// </summary>
    public VcpuState CaptureState() => new()
    {
        VcpuId = Id,
        Cpuid = GetCpuid(),
        Regs = GetRegs(),
        Sregs = GetSregs(),
        Fpu = GetFpu(),
        Xsave = GetXsave(),
        Xcrs = GetXcrs(),
        Msrs = GetMsrs(Vm.System.MsrIndices),
        MpState = GetMpState(),
        Events = GetVcpuEvents(),
        DebugRegs = GetDebugRegs(),
    };

    /// <summary>
    /// Writes <paramref name="state"/> into this vCPU, CPUID first (PVM accepts only the exact table
    /// it produced; see KVM-NOTES), then sregs, regs, FPU, XCRs, xsave, MSRs, MP state, events and
    /// debug registers. Returns the MSR indices KVM refused and that were skipped (without an
    /// in-kernel LAPIC: the async-PF interrupt MSR).
    /// </summary>
    public IReadOnlyList<uint> RestoreState(VcpuState state)
    {
        ArgumentNullException.ThrowIfNull(state);
        SetCpuid(state.Cpuid);
        SetSregs(state.Sregs);
        SetRegs(state.Regs);
        SetFpu(state.Fpu);
        SetXcrs(state.Xcrs);
        SetXsave(state.Xsave);
        IReadOnlyList<uint> skipped = SetMsrs(state.Msrs);
        SetMpState(state.MpState);
        SetVcpuEvents(state.Events);
        SetDebugRegs(state.DebugRegs);
        return skipped;
    }
}
