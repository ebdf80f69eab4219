using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Modular.Core.Interop;

#pragma warning disable CA1815, CA1051 // plain ABI mirrors: public fields, no equality
// Mirrors of the x86-64 register structs in asm/kvm.h; field order and sizes are the ABI
// (checked by KvmAbiTests).

/// <summary>struct kvm_regs.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct KvmRegs
{
    public ulong Rax, Rbx, Rcx, Rdx, Rsi, Rdi, Rsp, Rbp;
    public ulong R8, R9, R10, R11, R12, R13, R14, R15;
    public ulong Rip, Rflags;
}

/// <summary>struct kvm_segment.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct KvmSegment
{
    public ulong Base;
    public uint Limit;
    public ushort Selector;
    public byte Type;
    public byte Present, Dpl, Db, S, L, G, Avl;
    public byte Unusable;
    public byte Padding;
}

/// <summary>struct kvm_dtable.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct KvmDtable
{
    public ulong Base;
    public ushort Limit;
    public ushort Padding0, Padding1, Padding2;
}

/// <summary>struct kvm_sregs.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct KvmSregs
{
    public KvmSegment Cs, Ds, Es, Fs, Gs, Ss;
    public KvmSegment Tr, Ldt;
    public KvmDtable Gdt, Idt;
    public ulong Cr0, Cr2, Cr3, Cr4, Cr8;
    public ulong Efer;
    public ulong ApicBase;
    public fixed ulong InterruptBitmap[4];
}

/// <summary>struct kvm_fpu.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct KvmFpu
{
    public fixed byte Fpr[8 * 16];
    public ushort Fcw;
    public ushort Fsw;
    public byte Ftwx;
    public byte Pad1;
    public ushort LastOpcode;
    public ulong LastIp;
    public ulong LastDp;
    public fixed byte Xmm[16 * 16];
    public uint Mxcsr;
    public uint Pad2;
}

/// <summary>struct kvm_xcr.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct KvmXcr
{
    public uint Xcr;
    public uint Reserved;
    public ulong Value;
}

/// <summary>The 16 entries of kvm_xcrs.xcrs.</summary>
[InlineArray(16)]
public struct KvmXcrArray
{
    private KvmXcr _element;
}

/// <summary>struct kvm_xcrs.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct KvmXcrs
{
    public uint NrXcrs;
    public uint Flags;
    public KvmXcrArray Xcrs;
    public fixed ulong Padding[16];
}

/// <summary>struct kvm_msr_entry.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct KvmMsrEntry
{
    public uint Index;
    public uint Reserved;
    public ulong Data;
}

/// <summary>struct kvm_msrs header (entries follow).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct KvmMsrsHeader
{
    public uint Nmsrs;
    public uint Pad;
}

/// <summary>struct kvm_cpuid_entry2.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct KvmCpuidEntry2
{
    public uint Function;
    public uint Index;
    public uint Flags;
    public uint Eax, Ebx, Ecx, Edx;
    public uint Padding0, Padding1, Padding2;
}

/// <summary>struct kvm_cpuid2 header (entries follow).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct KvmCpuid2Header
{
    public uint Nent;
    public uint Padding;
}

/// <summary>struct kvm_mp_state.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct KvmMpState
{
    public uint MpState;
}

/// <summary>struct kvm_vcpu_events.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct KvmVcpuEvents
{
    public byte ExceptionInjected, ExceptionNr, ExceptionHasErrorCode, ExceptionPending;
    public uint ExceptionErrorCode;
    public byte InterruptInjected, InterruptNr, InterruptSoft, InterruptShadow;
    public byte NmiInjected, NmiPending, NmiMasked, NmiPad;
    public uint SipiVector;
    public uint Flags;
    public byte SmiSmm, SmiPending, SmiInsideNmi, SmiLatchedInit;
    public byte TripleFaultPending;
    public fixed byte Reserved[26];
    public byte ExceptionHasPayload;
    public ulong ExceptionPayload;
}

/// <summary>struct kvm_debugregs.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct KvmDebugRegs
{
    public fixed ulong Db[4];
    public ulong Dr6;
    public ulong Dr7;
    public ulong Flags;
    public fixed ulong Reserved[9];
}
#pragma warning restore CA1815, CA1051
