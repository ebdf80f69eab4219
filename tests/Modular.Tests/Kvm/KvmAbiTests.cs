using System.Diagnostics;
using System.Globalization;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using Modular.Core.Interop;

namespace Modular.Tests.Kvm;

/// <summary>
/// Compiles a C program against the real &lt;linux/kvm.h&gt; and compares every size, offset, ioctl
/// number and constant the interop layer marshals with the C# values.
/// </summary>
[TestClass]
public sealed class KvmAbiTests
{
    private static long Off<T>(string field) => Marshal.OffsetOf<T>(field).ToInt64();

    private static long Size<T>() => Unsafe.SizeOf<T>();

    private static long Run<T>(string field) => KvmIoctls.RunExitUnionOffset + Off<T>(field);

    /// <summary>(C expression, the C# value it must equal).</summary>
    private static IEnumerable<(string C, long CSharp)> Facts()
    {
        // struct kvm_regs
        yield return ("sizeof(struct kvm_regs)", Size<KvmRegs>());
        foreach (string f in new[] { "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags" })
        {
            yield return ($"offsetof(struct kvm_regs, {f})", Off<KvmRegs>(Pascal(f)));
        }

        // struct kvm_segment, kvm_dtable, kvm_sregs
        yield return ("sizeof(struct kvm_segment)", Size<KvmSegment>());
        foreach ((string c, string cs) in new[] { ("base", "Base"), ("limit", "Limit"), ("selector", "Selector"), ("type", "Type"), ("present", "Present"), ("dpl", "Dpl"), ("db", "Db"), ("s", "S"), ("l", "L"), ("g", "G"), ("avl", "Avl"), ("unusable", "Unusable"), ("padding", "Padding") })
        {
            yield return ($"offsetof(struct kvm_segment, {c})", Off<KvmSegment>(cs));
        }

        yield return ("sizeof(struct kvm_dtable)", Size<KvmDtable>());
        yield return ("offsetof(struct kvm_dtable, limit)", Off<KvmDtable>("Limit"));
        yield return ("sizeof(struct kvm_sregs)", Size<KvmSregs>());
        foreach ((string c, string cs) in new[] { ("cs", "Cs"), ("ds", "Ds"), ("es", "Es"), ("fs", "Fs"), ("gs", "Gs"), ("ss", "Ss"), ("tr", "Tr"), ("ldt", "Ldt"), ("gdt", "Gdt"), ("idt", "Idt"), ("cr0", "Cr0"), ("cr2", "Cr2"), ("cr3", "Cr3"), ("cr4", "Cr4"), ("cr8", "Cr8"), ("efer", "Efer"), ("apic_base", "ApicBase"), ("interrupt_bitmap", "InterruptBitmap") })
        {
            yield return ($"offsetof(struct kvm_sregs, {c})", Off<KvmSregs>(cs));
        }

        // struct kvm_fpu
        yield return ("sizeof(struct kvm_fpu)", Size<KvmFpu>());
        foreach ((string c, string cs) in new[] { ("fpr", "Fpr"), ("fcw", "Fcw"), ("fsw", "Fsw"), ("ftwx", "Ftwx"), ("pad1", "Pad1"), ("last_opcode", "LastOpcode"), ("last_ip", "LastIp"), ("last_dp", "LastDp"), ("xmm", "Xmm"), ("mxcsr", "Mxcsr"), ("pad2", "Pad2") })
        {
            yield return ($"offsetof(struct kvm_fpu, {c})", Off<KvmFpu>(cs));
        }

        // xcrs, msrs, cpuid, mp_state, debugregs, xsave
        yield return ("sizeof(struct kvm_xcr)", Size<KvmXcr>());
        yield return ("offsetof(struct kvm_xcr, value)", Off<KvmXcr>("Value"));
        yield return ("sizeof(struct kvm_xcrs)", Size<KvmXcrs>());
        yield return ("offsetof(struct kvm_xcrs, flags)", Off<KvmXcrs>("Flags"));
        yield return ("offsetof(struct kvm_xcrs, xcrs)", Off<KvmXcrs>("Xcrs"));
        yield return ("offsetof(struct kvm_xcrs, padding)", Off<KvmXcrs>("Padding"));
        yield return ("sizeof(struct kvm_msr_entry)", Size<KvmMsrEntry>());
        yield return ("offsetof(struct kvm_msr_entry, data)", Off<KvmMsrEntry>("Data"));
        yield return ("sizeof(struct kvm_msrs)", Size<KvmMsrsHeader>());
        yield return ("offsetof(struct kvm_msrs, entries)", Size<KvmMsrsHeader>());
        yield return ("sizeof(struct kvm_msr_list)", 4);
        yield return ("offsetof(struct kvm_msr_list, indices)", 4);
        yield return ("sizeof(struct kvm_cpuid_entry2)", Size<KvmCpuidEntry2>());
        foreach ((string c, string cs) in new[] { ("function", "Function"), ("index", "Index"), ("flags", "Flags"), ("eax", "Eax"), ("ebx", "Ebx"), ("ecx", "Ecx"), ("edx", "Edx"), ("padding", "Padding0") })
        {
            yield return ($"offsetof(struct kvm_cpuid_entry2, {c})", Off<KvmCpuidEntry2>(cs));
        }

        yield return ("sizeof(struct kvm_cpuid2)", Size<KvmCpuid2Header>());
        yield return ("offsetof(struct kvm_cpuid2, entries)", Size<KvmCpuid2Header>());
        yield return ("sizeof(struct kvm_mp_state)", Size<KvmMpState>());
        yield return ("sizeof(struct kvm_debugregs)", Size<KvmDebugRegs>());
        foreach ((string c, string cs) in new[] { ("db", "Db"), ("dr6", "Dr6"), ("dr7", "Dr7"), ("flags", "Flags"), ("reserved", "Reserved") })
        {
            yield return ($"offsetof(struct kvm_debugregs, {c})", Off<KvmDebugRegs>(cs));
        }

        yield return ("sizeof(struct kvm_xsave)", 4096);

        // struct kvm_vcpu_events
        yield return ("sizeof(struct kvm_vcpu_events)", Size<KvmVcpuEvents>());
        foreach ((string c, string cs) in new[]
        {
            ("exception.injected", "ExceptionInjected"), ("exception.nr", "ExceptionNr"), ("exception.has_error_code", "ExceptionHasErrorCode"),
            ("exception.pending", "ExceptionPending"), ("exception.error_code", "ExceptionErrorCode"), ("interrupt.injected", "InterruptInjected"),
            ("interrupt.nr", "InterruptNr"), ("interrupt.soft", "InterruptSoft"), ("interrupt.shadow", "InterruptShadow"), ("nmi.injected", "NmiInjected"),
            ("nmi.pending", "NmiPending"), ("nmi.masked", "NmiMasked"), ("nmi.pad", "NmiPad"), ("sipi_vector", "SipiVector"), ("flags", "Flags"),
            ("smi.smm", "SmiSmm"), ("smi.pending", "SmiPending"), ("smi.smm_inside_nmi", "SmiInsideNmi"), ("smi.latched_init", "SmiLatchedInit"),
            ("triple_fault.pending", "TripleFaultPending"), ("reserved", "Reserved"), ("exception_has_payload", "ExceptionHasPayload"), ("exception_payload", "ExceptionPayload"),
        })
        {
            yield return ($"offsetof(struct kvm_vcpu_events, {c})", Off<KvmVcpuEvents>(cs));
        }

        // VM structs
        yield return ("sizeof(struct kvm_userspace_memory_region)", Size<KvmUserspaceMemoryRegion>());
        foreach ((string c, string cs) in new[] { ("slot", "Slot"), ("flags", "Flags"), ("guest_phys_addr", "GuestPhysAddr"), ("memory_size", "MemorySize"), ("userspace_addr", "UserspaceAddr") })
        {
            yield return ($"offsetof(struct kvm_userspace_memory_region, {c})", Off<KvmUserspaceMemoryRegion>(cs));
        }

        yield return ("sizeof(struct kvm_dirty_log)", Size<KvmDirtyLog>());
        yield return ("offsetof(struct kvm_dirty_log, dirty_bitmap)", Off<KvmDirtyLog>("DirtyBitmap"));
        yield return ("sizeof(struct kvm_clear_dirty_log)", Size<KvmClearDirtyLog>());
        foreach ((string c, string cs) in new[] { ("slot", "Slot"), ("num_pages", "NumPages"), ("first_page", "FirstPage"), ("dirty_bitmap", "DirtyBitmap") })
        {
            yield return ($"offsetof(struct kvm_clear_dirty_log, {c})", Off<KvmClearDirtyLog>(cs));
        }

        yield return ("sizeof(struct kvm_enable_cap)", Size<KvmEnableCap>());
        yield return ("offsetof(struct kvm_enable_cap, args)", Off<KvmEnableCap>("Args"));
        yield return ("offsetof(struct kvm_enable_cap, pad)", Off<KvmEnableCap>("Pad"));
        yield return ("sizeof(struct kvm_clock_data)", Size<KvmClockData>());
        foreach ((string c, string cs) in new[] { ("clock", "Clock"), ("flags", "Flags"), ("realtime", "Realtime"), ("host_tsc", "HostTsc"), ("pad", "Pad") })
        {
            yield return ($"offsetof(struct kvm_clock_data, {c})", Off<KvmClockData>(cs));
        }

        yield return ("sizeof(struct kvm_signal_mask)", Size<KvmSignalMaskHeader>());
        yield return ("offsetof(struct kvm_signal_mask, sigset)", Size<KvmSignalMaskHeader>());

        // struct kvm_run
        foreach ((string c, string cs) in new[] { ("request_interrupt_window", "RequestInterruptWindow"), ("immediate_exit", "ImmediateExit"), ("exit_reason", "ExitReason"), ("ready_for_interrupt_injection", "ReadyForInterruptInjection"), ("if_flag", "IfFlag"), ("flags", "Flags"), ("cr8", "Cr8"), ("apic_base", "ApicBase") })
        {
            yield return ($"offsetof(struct kvm_run, {c})", Off<KvmRunHead>(cs));
        }

        yield return ("offsetof(struct kvm_run, io)", KvmIoctls.RunExitUnionOffset);
        foreach ((string c, string cs) in new[] { ("direction", "Direction"), ("size", "Size"), ("port", "Port"), ("count", "Count"), ("data_offset", "DataOffset") })
        {
            yield return ($"offsetof(struct kvm_run, io.{c})", Run<KvmRunIo>(cs));
        }

        foreach ((string c, string cs) in new[] { ("phys_addr", "PhysAddr"), ("data", "Data"), ("len", "Len"), ("is_write", "IsWrite") })
        {
            yield return ($"offsetof(struct kvm_run, mmio.{c})", Run<KvmRunMmio>(cs));
        }

        yield return ("offsetof(struct kvm_run, fail_entry.hardware_entry_failure_reason)", Run<KvmRunFailEntry>("HardwareEntryFailureReason"));
        yield return ("offsetof(struct kvm_run, fail_entry.cpu)", Run<KvmRunFailEntry>("Cpu"));
        yield return ("offsetof(struct kvm_run, internal.suberror)", Run<KvmRunInternal>("Suberror"));
        yield return ("offsetof(struct kvm_run, internal.ndata)", Run<KvmRunInternal>("Ndata"));
        yield return ("offsetof(struct kvm_run, internal.data)", Run<KvmRunInternal>("Data"));
        yield return ("offsetof(struct kvm_run, system_event.type)", KvmIoctls.RunExitUnionOffset);

        // ioctl numbers
        foreach ((string c, nuint cs) in new[]
        {
            ("KVM_GET_API_VERSION", KvmIoctls.GetApiVersion), ("KVM_CREATE_VM", KvmIoctls.CreateVm), ("KVM_GET_MSR_INDEX_LIST", KvmIoctls.GetMsrIndexList),
            ("KVM_CHECK_EXTENSION", KvmIoctls.CheckExtension), ("KVM_GET_VCPU_MMAP_SIZE", KvmIoctls.GetVcpuMmapSize), ("KVM_GET_SUPPORTED_CPUID", KvmIoctls.GetSupportedCpuid),
            ("KVM_CREATE_VCPU", KvmIoctls.CreateVcpu), ("KVM_GET_DIRTY_LOG", KvmIoctls.GetDirtyLog), ("KVM_SET_USER_MEMORY_REGION", KvmIoctls.SetUserMemoryRegion),
            ("KVM_SET_CLOCK", KvmIoctls.SetClock), ("KVM_GET_CLOCK", KvmIoctls.GetClock), ("KVM_ENABLE_CAP", KvmIoctls.EnableCap), ("KVM_CLEAR_DIRTY_LOG", KvmIoctls.ClearDirtyLog),
            ("KVM_RUN", KvmIoctls.Run), ("KVM_GET_REGS", KvmIoctls.GetRegs), ("KVM_SET_REGS", KvmIoctls.SetRegs), ("KVM_GET_SREGS", KvmIoctls.GetSregs), ("KVM_SET_SREGS", KvmIoctls.SetSregs),
            ("KVM_GET_MSRS", KvmIoctls.GetMsrs), ("KVM_SET_MSRS", KvmIoctls.SetMsrs), ("KVM_SET_SIGNAL_MASK", KvmIoctls.SetSignalMask), ("KVM_GET_FPU", KvmIoctls.GetFpu),
            ("KVM_SET_FPU", KvmIoctls.SetFpu), ("KVM_SET_CPUID2", KvmIoctls.SetCpuid2), ("KVM_GET_CPUID2", KvmIoctls.GetCpuid2), ("KVM_GET_MP_STATE", KvmIoctls.GetMpState),
            ("KVM_SET_MP_STATE", KvmIoctls.SetMpState), ("KVM_GET_VCPU_EVENTS", KvmIoctls.GetVcpuEvents), ("KVM_SET_VCPU_EVENTS", KvmIoctls.SetVcpuEvents),
            ("KVM_GET_DEBUGREGS", KvmIoctls.GetDebugRegs), ("KVM_SET_DEBUGREGS", KvmIoctls.SetDebugRegs), ("KVM_GET_XSAVE", KvmIoctls.GetXsave), ("KVM_SET_XSAVE", KvmIoctls.SetXsave),
            ("KVM_GET_XCRS", KvmIoctls.GetXcrs), ("KVM_SET_XCRS", KvmIoctls.SetXcrs), ("KVM_GET_XSAVE2", KvmIoctls.GetXsave2),
        })
        {
            yield return (c, (long)cs);
        }

        // constants
        foreach ((string c, long cs) in new (string, long)[]
        {
            ("KVM_API_VERSION", KvmIoctls.ApiVersion), ("KVM_CAP_USER_MEMORY", KvmIoctls.CapUserMemory), ("KVM_CAP_NR_MEMSLOTS", KvmIoctls.CapNrMemslots),
            ("KVM_CAP_ADJUST_CLOCK", KvmIoctls.CapAdjustClock), ("KVM_CAP_VCPU_EVENTS", KvmIoctls.CapVcpuEvents), ("KVM_CAP_DEBUGREGS", KvmIoctls.CapDebugRegs),
            ("KVM_CAP_XSAVE", KvmIoctls.CapXsave), ("KVM_CAP_XCRS", KvmIoctls.CapXcrs), ("KVM_CAP_IMMEDIATE_EXIT", KvmIoctls.CapImmediateExit),
            ("KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2", KvmIoctls.CapManualDirtyLogProtect2), ("KVM_CAP_XSAVE2", KvmIoctls.CapXsave2),
            ("KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE", (long)KvmIoctls.DirtyLogManualProtectEnable), ("KVM_DIRTY_LOG_INITIALLY_SET", (long)KvmIoctls.DirtyLogInitiallySet),
            ("KVM_MEM_LOG_DIRTY_PAGES", KvmIoctls.MemLogDirtyPages), ("KVM_EXIT_UNKNOWN", KvmIoctls.ExitUnknown), ("KVM_EXIT_EXCEPTION", KvmIoctls.ExitException),
            ("KVM_EXIT_IO", KvmIoctls.ExitIo), ("KVM_EXIT_HYPERCALL", KvmIoctls.ExitHypercall), ("KVM_EXIT_DEBUG", KvmIoctls.ExitDebug), ("KVM_EXIT_HLT", KvmIoctls.ExitHlt),
            ("KVM_EXIT_MMIO", KvmIoctls.ExitMmio), ("KVM_EXIT_IRQ_WINDOW_OPEN", KvmIoctls.ExitIrqWindowOpen), ("KVM_EXIT_SHUTDOWN", KvmIoctls.ExitShutdown),
            ("KVM_EXIT_FAIL_ENTRY", KvmIoctls.ExitFailEntry), ("KVM_EXIT_INTR", KvmIoctls.ExitIntr), ("KVM_EXIT_INTERNAL_ERROR", KvmIoctls.ExitInternalError),
            ("KVM_EXIT_SYSTEM_EVENT", KvmIoctls.ExitSystemEvent), ("KVM_EXIT_IO_IN", KvmIoctls.ExitIoIn), ("KVM_EXIT_IO_OUT", KvmIoctls.ExitIoOut),
            ("KVM_INTERNAL_ERROR_EMULATION", KvmIoctls.InternalErrorEmulation), ("KVM_INTERNAL_ERROR_SIMUL_EX", KvmIoctls.InternalErrorSimulEx),
            ("KVM_INTERNAL_ERROR_DELIVERY_EV", KvmIoctls.InternalErrorDeliveryEv), ("KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON", KvmIoctls.InternalErrorUnexpectedExitReason),
            ("O_RDWR", Libc.O_RDWR), ("O_CLOEXEC", Libc.O_CLOEXEC), ("PROT_READ", Libc.PROT_READ), ("PROT_WRITE", Libc.PROT_WRITE), ("MAP_SHARED", Libc.MAP_SHARED),
            ("MAP_PRIVATE", Libc.MAP_PRIVATE), ("MAP_ANONYMOUS", Libc.MAP_ANONYMOUS), ("MAP_NORESERVE", Libc.MAP_NORESERVE), ("MAP_HUGETLB", Libc.MAP_HUGETLB),
            ("MAP_HUGE_2MB", Libc.MAP_HUGE_2MB), ("MADV_DONTNEED", Libc.MADV_DONTNEED), ("MADV_HUGEPAGE", Libc.MADV_HUGEPAGE), ("EFD_NONBLOCK", Libc.EFD_NONBLOCK),
            ("EFD_CLOEXEC", Libc.EFD_CLOEXEC), ("SIG_BLOCK", Libc.SIG_BLOCK), ("SIG_UNBLOCK", Libc.SIG_UNBLOCK), ("SIG_SETMASK", Libc.SIG_SETMASK),
            ("sizeof(sigset_t)", Libc.GlibcSigsetBytes), ("sizeof(struct timespec)", Size<Libc.Timespec>()), ("EPERM", Libc.EPERM), ("ENOENT", Libc.ENOENT),
            ("ESRCH", Libc.ESRCH), ("EINTR", Libc.EINTR), ("E2BIG", Libc.E2BIG), ("EAGAIN", Libc.EAGAIN), ("ENOMEM", Libc.ENOMEM), ("EACCES", Libc.EACCES), ("EINVAL", Libc.EINVAL),
        })
        {
            yield return (c, cs);
        }
    }

    private static string Pascal(string name) => char.ToUpperInvariant(name[0]) + name[1..];

    [TestMethod]
    public void EveryMarshalledSizeOffsetAndConstantMatchesTheKernelHeaders()
    {
        List<(string C, long CSharp)> facts = Facts().ToList();
        Dictionary<string, long> fromC = CompileAndRun(facts.Select(f => f.C));

        var mismatches = new List<string>();
        foreach ((string c, long cs) in facts)
        {
            if (fromC[c] != cs)
            {
                mismatches.Add($"{c}: C says {fromC[c]} (0x{fromC[c]:x}), C# says {cs} (0x{cs:x})");
            }
        }

        Assert.IsTrue(facts.Count > 200, $"only {facts.Count} facts checked");
        Assert.AreEqual(0, mismatches.Count, "ABI mismatches:\n" + string.Join("\n", mismatches));
    }

    private static Dictionary<string, long> CompileAndRun(IEnumerable<string> expressions)
    {
        string gcc = new[] { "/usr/bin/gcc", "/usr/bin/cc" }.FirstOrDefault(File.Exists) ?? "";
        if (gcc.Length == 0 || !File.Exists("/usr/include/linux/kvm.h"))
        {
            Assert.Inconclusive("gcc or /usr/include/linux/kvm.h is missing: install gcc and linux-libc-dev to run the ABI check.");
        }

        string dir = Directory.CreateTempSubdirectory("modular-kvm-abi-").FullName;
        try
        {
            var source = new StringBuilder();
            source.AppendLine("#define _GNU_SOURCE");
            source.AppendLine("#include <stdio.h>\n#include <stddef.h>\n#include <signal.h>\n#include <time.h>\n#include <errno.h>\n#include <fcntl.h>");
            source.AppendLine("#include <sys/mman.h>\n#include <sys/eventfd.h>\n#include <linux/mman.h>\n#include <linux/kvm.h>");
            source.AppendLine("int main(void) {");
            foreach (string expression in expressions)
            {
                source.AppendLine(CultureInfo.InvariantCulture, $"  printf(\"%s\\t%lld\\n\", \"{expression}\", (long long)({expression}));");
            }

            source.AppendLine("  return 0;\n}");
            string cFile = Path.Combine(dir, "abi.c");
            string exe = Path.Combine(dir, "abi");
            File.WriteAllText(cFile, source.ToString());
            RunProcess(gcc, $"-Wall -Werror -o {exe} {cFile}", "compiling the ABI probe");
            string output = RunProcess(exe, "", "running the ABI probe");
            return output.Split('\n', StringSplitOptions.RemoveEmptyEntries)
                .Select(line => line.Split('\t'))
                .ToDictionary(parts => parts[0], parts => long.Parse(parts[1], CultureInfo.InvariantCulture));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private static string RunProcess(string file, string arguments, string what)
    {
        using var process = Process.Start(new ProcessStartInfo(file, arguments) { RedirectStandardOutput = true, RedirectStandardError = true })!;
        string stdout = process.StandardOutput.ReadToEnd();
        string stderr = process.StandardError.ReadToEnd();
        process.WaitForExit();
        Assert.AreEqual(0, process.ExitCode, $"{what} failed:\n{stderr}");
        return stdout;
    }
}
