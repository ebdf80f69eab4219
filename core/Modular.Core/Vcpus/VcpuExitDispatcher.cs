using System.Globalization;
using Modular.Abstractions.Memory;
using Modular.Core.Interop;
using Modular.Core.Kvm;

namespace Modular.Core.Vcpus;

/// <summary>Reads struct kvm_run after a KVM_RUN and calls the exit handler. vCPU thread only.</summary>
internal static unsafe class VcpuExitDispatcher
{
    /// <summary>Handles one exit. Returns null to keep running, or the reason the vCPU cannot go on.</summary>
    internal static string? Dispatch(KvmVcpu vcpu, IVcpuExitHandler handler, out bool halted)
    {
        halted = false;
        byte* run = vcpu.RunPointer;
        // SAFETY: run is the vCPU's live kvm_run mapping (VcpuMmapSize bytes); KVM filled the exit
        // fields before KVM_RUN returned, and only this thread touches them until the next run.
        var head = (KvmRunHead*)run;
        byte* exit = run + KvmIoctls.RunExitUnionOffset;
        switch (head->ExitReason)
        {
            case KvmIoctls.ExitIo:
                DispatchIo(vcpu, handler, run, (KvmRunIo*)exit);
                return null;
            case KvmIoctls.ExitMmio:
                DispatchMmio(handler, (KvmRunMmio*)exit);
                return null;
            case KvmIoctls.ExitHlt:
                handler.OnHalt(vcpu.Id);
                halted = true;
                return null;
            case KvmIoctls.ExitIntr:
            case KvmIoctls.ExitIrqWindowOpen:
                return null;
            case KvmIoctls.ExitShutdown:
                return $"vCPU {vcpu.Id}: the guest triple-faulted (KVM_EXIT_SHUTDOWN) near RIP {Rip(vcpu)}; check its GDT/IDT and page tables.";
            case KvmIoctls.ExitFailEntry:
                var fail = (KvmRunFailEntry*)exit;
                return $"vCPU {vcpu.Id}: KVM could not enter the guest (KVM_EXIT_FAIL_ENTRY), hardware entry failure reason 0x{fail->HardwareEntryFailureReason:x} on host CPU {fail->Cpu}; the register state is invalid for this CPU (RIP {Rip(vcpu)}).";
            case KvmIoctls.ExitInternalError:
                return DescribeInternalError(vcpu, (KvmRunInternal*)exit);
            case KvmIoctls.ExitSystemEvent:
                return $"vCPU {vcpu.Id}: the guest asked for a system event (KVM_EXIT_SYSTEM_EVENT type {*(uint*)exit}): shutdown or reset.";
            default:
                return $"vCPU {vcpu.Id}: unhandled KVM exit reason {head->ExitReason} near RIP {Rip(vcpu)}.";
        }
    }

    private static void DispatchIo(KvmVcpu vcpu, IVcpuExitHandler handler, byte* run, KvmRunIo* io)
    {
        int size = io->Size;
        uint count = io->Count;
        ulong limit = (ulong)vcpu.Vm.System.VcpuMmapSize;
        if (size is not (1 or 2 or 4) || io->DataOffset + ((ulong)size * count) > limit)
        {
            throw new InvalidOperationException(
                $"vCPU {vcpu.Id}: KVM reported port I/O on 0x{io->Port:x} with size {size} x {count} at data offset {io->DataOffset}, outside struct kvm_run ({limit} bytes).");
        }

        // A string instruction (INS/OUTS, REP) arrives as count elements of size bytes each, back to
        // back at data_offset; each element is one access to the port.
        byte* data = run + io->DataOffset;
        for (uint i = 0; i < count; i++)
        {
            var element = new Span<byte>(data + (i * (uint)size), size);
            if (io->Direction == KvmIoctls.ExitIoOut)
            {
                handler.PortOut(io->Port, element);
            }
            else
            {
                handler.PortIn(io->Port, element);
            }
        }
    }

    private static void DispatchMmio(IVcpuExitHandler handler, KvmRunMmio* mmio)
    {
        int length = (int)Math.Min(mmio->Len, 8u);
        var data = new Span<byte>(mmio->Data, length);
        var address = new GuestPhysicalAddress(mmio->PhysAddr);
        if (mmio->IsWrite != 0)
        {
            handler.MmioWrite(address, data);
        }
        else
        {
            handler.MmioRead(address, data);
        }
    }

    private static string DescribeInternalError(KvmVcpu vcpu, KvmRunInternal* error)
    {
        string kind = error->Suberror switch
        {
            KvmIoctls.InternalErrorEmulation => "instruction emulation failed",
            KvmIoctls.InternalErrorSimulEx => "exception while delivering an exception",
            KvmIoctls.InternalErrorDeliveryEv => "event delivery failed",
            KvmIoctls.InternalErrorUnexpectedExitReason => "unexpected exit reason",
            _ => "unknown suberror",
        };
        int n = (int)Math.Min(error->Ndata, 16u);
        var data = new string[n];
        for (int i = 0; i < n; i++)
        {
            data[i] = "0x" + error->Data[i].ToString("x", CultureInfo.InvariantCulture);
        }

        return $"vCPU {vcpu.Id}: KVM internal error (KVM_EXIT_INTERNAL_ERROR) suberror {error->Suberror}: {kind}, near RIP {Rip(vcpu)}; data [{string.Join(", ", data)}].";
    }

    private static string Rip(KvmVcpu vcpu)
    {
        try
        {
            return "0x" + vcpu.GetRegs().Rip.ToString("x", CultureInfo.InvariantCulture);
        }
        catch (KvmIoctlException)
        {
            return "(unreadable)";
        }
    }
}
