namespace Modular.Core.Interop;

/// <summary>
/// Every KVM ioctl number, capability and exit reason the VMM uses, in one place
/// (linux/kvm.h, asm/kvm.h for x86-64). KvmAbiTests compiles a C program against the real headers
/// and checks each number here.
/// </summary>
internal static class KvmIoctls
{
    private const uint KvmIo = 0xAE;
    private const uint IocNone = 0;
    private const uint IocWrite = 1;
    private const uint IocRead = 2;

    private static nuint Ioc(uint direction, uint number, uint size) =>
        (nuint)((direction << 30) | (size << 16) | (KvmIo << 8) | number);

    private static nuint Io(uint number) => Ioc(IocNone, number, 0);

    private static nuint Ior(uint number, uint size) => Ioc(IocRead, number, size);

    private static nuint Iow(uint number, uint size) => Ioc(IocWrite, number, size);

    private static nuint Iowr(uint number, uint size) => Ioc(IocRead | IocWrite, number, size);

    // System (/dev/kvm) ioctls.
    internal static readonly nuint GetApiVersion = Io(0x00);
    internal static readonly nuint CreateVm = Io(0x01);
    internal static readonly nuint GetMsrIndexList = Iowr(0x02, 4);        // struct kvm_msr_list
    internal static readonly nuint CheckExtension = Io(0x03);
    internal static readonly nuint GetVcpuMmapSize = Io(0x04);
    internal static readonly nuint GetSupportedCpuid = Iowr(0x05, 8);      // struct kvm_cpuid2

    // VM ioctls.
    internal static readonly nuint CreateVcpu = Io(0x41);
    internal static readonly nuint GetDirtyLog = Iow(0x42, 16);            // struct kvm_dirty_log
    internal static readonly nuint SetUserMemoryRegion = Iow(0x46, 32);    // struct kvm_userspace_memory_region
    internal static readonly nuint SetClock = Iow(0x7b, 48);               // struct kvm_clock_data
    internal static readonly nuint GetClock = Ior(0x7c, 48);
    internal static readonly nuint EnableCap = Iow(0xa3, 104);             // struct kvm_enable_cap
    internal static readonly nuint ClearDirtyLog = Iowr(0xc0, 24);         // struct kvm_clear_dirty_log

    // vCPU ioctls.
    internal static readonly nuint Run = Io(0x80);
    internal static readonly nuint GetRegs = Ior(0x81, 144);               // struct kvm_regs
    internal static readonly nuint SetRegs = Iow(0x82, 144);
    internal static readonly nuint GetSregs = Ior(0x83, 312);              // struct kvm_sregs
    internal static readonly nuint SetSregs = Iow(0x84, 312);
    internal static readonly nuint GetMsrs = Iowr(0x88, 8);                // struct kvm_msrs
    internal static readonly nuint SetMsrs = Iow(0x89, 8);
    internal static readonly nuint SetSignalMask = Iow(0x8b, 4);           // struct kvm_signal_mask
    internal static readonly nuint GetFpu = Ior(0x8c, 416);                // struct kvm_fpu
    internal static readonly nuint SetFpu = Iow(0x8d, 416);
    internal static readonly nuint SetCpuid2 = Iow(0x90, 8);               // struct kvm_cpuid2
    internal static readonly nuint GetCpuid2 = Iowr(0x91, 8);
    internal static readonly nuint GetMpState = Ior(0x98, 4);              // struct kvm_mp_state
    internal static readonly nuint SetMpState = Iow(0x99, 4);
    internal static readonly nuint GetVcpuEvents = Ior(0x9f, 64);          // struct kvm_vcpu_events
    internal static readonly nuint SetVcpuEvents = Iow(0xa0, 64);
    internal static readonly nuint GetDebugRegs = Ior(0xa1, 128);          // struct kvm_debugregs
    internal static readonly nuint SetDebugRegs = Iow(0xa2, 128);
    internal static readonly nuint GetXsave = Ior(0xa4, 4096);             // struct kvm_xsave
    internal static readonly nuint SetXsave = Iow(0xa5, 4096);
    internal static readonly nuint GetXcrs = Ior(0xa6, 392);               // struct kvm_xcrs
    internal static readonly nuint SetXcrs = Iow(0xa7, 392);
    internal static readonly nuint GetXsave2 = Ior(0xcf, 4096);

    /// <summary>The KVM API version every kernel since 2.6.22 reports.</summary>
    internal const int ApiVersion = 12;

    // Capabilities (KVM_CHECK_EXTENSION).
    internal const int CapUserMemory = 3;
    internal const int CapNrMemslots = 10;
    internal const int CapAdjustClock = 39;
    internal const int CapVcpuEvents = 41;
    internal const int CapDebugRegs = 50;
    internal const int CapXsave = 55;
    internal const int CapXcrs = 56;
    internal const int CapImmediateExit = 136;
    internal const int CapManualDirtyLogProtect2 = 168;
    internal const int CapXsave2 = 208;

    // KVM_ENABLE_CAP(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) arguments.
    internal const ulong DirtyLogManualProtectEnable = 1;
    internal const ulong DirtyLogInitiallySet = 2;

    // kvm_userspace_memory_region.flags
    internal const uint MemLogDirtyPages = 1;

    // kvm_run.exit_reason
    internal const uint ExitUnknown = 0;
    internal const uint ExitException = 1;
    internal const uint ExitIo = 2;
    internal const uint ExitHypercall = 3;
    internal const uint ExitDebug = 4;
    internal const uint ExitHlt = 5;
    internal const uint ExitMmio = 6;
    internal const uint ExitIrqWindowOpen = 7;
    internal const uint ExitShutdown = 8;
    internal const uint ExitFailEntry = 9;
    internal const uint ExitIntr = 10;
    internal const uint ExitInternalError = 17;
    internal const uint ExitSystemEvent = 24;

    // kvm_run.io.direction
    internal const byte ExitIoIn = 0;
    internal const byte ExitIoOut = 1;

    // kvm_run.internal.suberror
    internal const uint InternalErrorEmulation = 1;
    internal const uint InternalErrorSimulEx = 2;
    internal const uint InternalErrorDeliveryEv = 3;
    internal const uint InternalErrorUnexpectedExitReason = 4;

    /// <summary>Offset of the exit union inside struct kvm_run on x86-64.</summary>
    internal const int RunExitUnionOffset = 32;
}
