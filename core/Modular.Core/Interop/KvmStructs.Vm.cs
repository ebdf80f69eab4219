using System.Runtime.InteropServices;

namespace Modular.Core.Interop;

#pragma warning disable CA1815, CA1051 // plain ABI mirrors: public fields, no equality
// Mirrors of the VM-level structs and struct kvm_run in linux/kvm.h (checked by KvmAbiTests).

/// <summary>struct kvm_userspace_memory_region.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct KvmUserspaceMemoryRegion
{
    public uint Slot;
    public uint Flags;
    public ulong GuestPhysAddr;
    public ulong MemorySize;
    public ulong UserspaceAddr;
}

/// <summary>struct kvm_dirty_log.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct KvmDirtyLog
{
    public uint Slot;
    public uint Padding1;
    public nint DirtyBitmap;
}

/// <summary>struct kvm_clear_dirty_log.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct KvmClearDirtyLog
{
    public uint Slot;
    public uint NumPages;
    public ulong FirstPage;
    public nint DirtyBitmap;
}

/// <summary>struct kvm_enable_cap.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct KvmEnableCap
{
    public uint Cap;
    public uint Flags;
    public fixed ulong Args[4];
    public fixed byte Pad[64];
}

/// <summary>struct kvm_clock_data.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct KvmClockData
{
    public ulong Clock;
    public uint Flags;
    public uint Pad0;
    public ulong Realtime;
    public ulong HostTsc;
    public fixed uint Pad[4];
}

/// <summary>struct kvm_signal_mask header (the sigset bytes follow).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct KvmSignalMaskHeader
{
    public uint Len;
}

/// <summary>The fixed head of struct kvm_run (up to the exit union at offset 32).</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct KvmRunHead
{
    public byte RequestInterruptWindow;
    public byte ImmediateExit;
    public fixed byte Padding1[6];
    public uint ExitReason;
    public byte ReadyForInterruptInjection;
    public byte IfFlag;
    public ushort Flags;
    public ulong Cr8;
    public ulong ApicBase;
}

/// <summary>kvm_run.io (KVM_EXIT_IO).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct KvmRunIo
{
    public byte Direction;
    public byte Size;
    public ushort Port;
    public uint Count;
    public ulong DataOffset;
}

/// <summary>kvm_run.mmio (KVM_EXIT_MMIO).</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct KvmRunMmio
{
    public ulong PhysAddr;
    public fixed byte Data[8];
    public uint Len;
    public byte IsWrite;
}

/// <summary>kvm_run.fail_entry (KVM_EXIT_FAIL_ENTRY).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct KvmRunFailEntry
{
    public ulong HardwareEntryFailureReason;
    public uint Cpu;
}

/// <summary>kvm_run.internal (KVM_EXIT_INTERNAL_ERROR).</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct KvmRunInternal
{
    public uint Suberror;
    public uint Ndata;
    public fixed ulong Data[16];
}
#pragma warning restore CA1815, CA1051
