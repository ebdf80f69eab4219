using System.Runtime.InteropServices;
using Modular.Core.Interop;

namespace Modular.Core.Kvm;

/// <summary>
/// One KVM vCPU fd and its mapped struct kvm_run. Register access and <see cref="RunOnce"/> belong
/// to the vCPU's own thread while it runs (see <see cref="Vcpus.VcpuThread"/>); other threads touch
/// registers only while the vCPU is paused.
/// </summary>
public sealed unsafe partial class KvmVcpu : IDisposable
{
    private readonly SafeFileDescriptor _fd;
    private readonly MappedMemory _run;
    private KvmCpuidEntry2[] _cpuid = [];

    internal KvmVcpu(KvmVm vm, int id, SafeFileDescriptor fd)
    {
        Vm = vm;
        Id = id;
        _fd = fd;
        int size = vm.System.VcpuMmapSize;
        nint address = Libc.Mmap(0, (nuint)size, Libc.PROT_READ | Libc.PROT_WRITE, Libc.MAP_SHARED, fd, 0);
        if (address == Libc.MAP_FAILED)
        {
            int errno = Marshal.GetLastPInvokeError();
            fd.Dispose();
            throw new KvmIoctlException($"mmap of struct kvm_run for vCPU {id}", errno);
        }

        _run = new MappedMemory(address, (ulong)size);
    }

    /// <summary>The vCPU index (KVM_CREATE_VCPU id).</summary>
    public int Id { get; }

    /// <summary>The VM this vCPU belongs to.</summary>
    public KvmVm Vm { get; }

    /// <summary>The CPUID table KVM holds for this vCPU (read back with KVM_GET_CPUID2 after every set: PVM rewrites it).</summary>
    public IReadOnlyList<KvmCpuidEntry2> Cpuid => _cpuid;

    internal SafeFileDescriptor Handle => _fd;

    /// <summary>Start of struct kvm_run. Valid while this object is alive.</summary>
    internal byte* RunPointer => (byte*)_run.DangerousGetHandle();

    /// <summary>kvm_run.immediate_exit: when 1, KVM_RUN returns EINTR before entering the guest. Any thread.</summary>
    internal bool ImmediateExit
    {
        // SAFETY: the kvm_run mapping lives as long as this object; a byte store is atomic.
        get => Volatile.Read(ref ((KvmRunHead*)RunPointer)->ImmediateExit) != 0;
        set => Volatile.Write(ref ((KvmRunHead*)RunPointer)->ImmediateExit, value ? (byte)1 : (byte)0);
    }

    /// <summary>KVM_SET_CPUID2 then KVM_GET_CPUID2; keeps the table KVM reports in <see cref="Cpuid"/>.</summary>
    public void SetCpuid(ReadOnlySpan<KvmCpuidEntry2> entries)
    {
        KvmCpuidTable.Store(_fd, entries, $"KVM_SET_CPUID2 on vCPU {Id} ({entries.Length} entries)");
        _cpuid = GetCpuid();
    }

    /// <summary>KVM_GET_CPUID2: the table KVM currently holds.</summary>
    public KvmCpuidEntry2[] GetCpuid() => KvmCpuidTable.Fetch(_fd, KvmIoctls.GetCpuid2, $"KVM_GET_CPUID2 on vCPU {Id}");

    /// <summary>KVM_GET_REGS.</summary>
    public KvmRegs GetRegs() => KvmCall.Get<KvmRegs>(_fd, KvmIoctls.GetRegs, $"KVM_GET_REGS on vCPU {Id}");

    /// <summary>KVM_SET_REGS.</summary>
    public void SetRegs(in KvmRegs regs) => KvmCall.Set(_fd, KvmIoctls.SetRegs, regs, $"KVM_SET_REGS on vCPU {Id}");

    /// <summary>KVM_GET_SREGS.</summary>
    public KvmSregs GetSregs() => KvmCall.Get<KvmSregs>(_fd, KvmIoctls.GetSregs, $"KVM_GET_SREGS on vCPU {Id}");

    /// <summary>KVM_SET_SREGS.</summary>
    public void SetSregs(in KvmSregs sregs) => KvmCall.Set(_fd, KvmIoctls.SetSregs, sregs, $"KVM_SET_SREGS on vCPU {Id}");

    /// <summary>KVM_GET_FPU.</summary>
    public KvmFpu GetFpu() => KvmCall.Get<KvmFpu>(_fd, KvmIoctls.GetFpu, $"KVM_GET_FPU on vCPU {Id}");

    /// <summary>KVM_SET_FPU.</summary>
    public void SetFpu(in KvmFpu fpu) => KvmCall.Set(_fd, KvmIoctls.SetFpu, fpu, $"KVM_SET_FPU on vCPU {Id}");

    /// <summary>KVM_GET_XCRS.</summary>
    public KvmXcrs GetXcrs() => KvmCall.Get<KvmXcrs>(_fd, KvmIoctls.GetXcrs, $"KVM_GET_XCRS on vCPU {Id}");

    /// <summary>KVM_SET_XCRS.</summary>
    public void SetXcrs(in KvmXcrs xcrs) => KvmCall.Set(_fd, KvmIoctls.SetXcrs, xcrs, $"KVM_SET_XCRS on vCPU {Id}");

    /// <summary>KVM_GET_MP_STATE.</summary>
    public KvmMpState GetMpState() => KvmCall.Get<KvmMpState>(_fd, KvmIoctls.GetMpState, $"KVM_GET_MP_STATE on vCPU {Id}");

    /// <summary>KVM_SET_MP_STATE.</summary>
    public void SetMpState(in KvmMpState state) => KvmCall.Set(_fd, KvmIoctls.SetMpState, state, $"KVM_SET_MP_STATE on vCPU {Id}");

    /// <summary>KVM_GET_VCPU_EVENTS.</summary>
    public KvmVcpuEvents GetVcpuEvents() => KvmCall.Get<KvmVcpuEvents>(_fd, KvmIoctls.GetVcpuEvents, $"KVM_GET_VCPU_EVENTS on vCPU {Id}");

    /// <summary>KVM_SET_VCPU_EVENTS.</summary>
    public void SetVcpuEvents(in KvmVcpuEvents events) => KvmCall.Set(_fd, KvmIoctls.SetVcpuEvents, events, $"KVM_SET_VCPU_EVENTS on vCPU {Id}");

    /// <summary>KVM_GET_DEBUGREGS.</summary>
    public KvmDebugRegs GetDebugRegs() => KvmCall.Get<KvmDebugRegs>(_fd, KvmIoctls.GetDebugRegs, $"KVM_GET_DEBUGREGS on vCPU {Id}");

    /// <summary>KVM_SET_DEBUGREGS.</summary>
    public void SetDebugRegs(in KvmDebugRegs regs) => KvmCall.Set(_fd, KvmIoctls.SetDebugRegs, regs, $"KVM_SET_DEBUGREGS on vCPU {Id}");

    /// <summary>KVM_GET_XSAVE2 (or KVM_GET_XSAVE when the kernel lacks KVM_CAP_XSAVE2): the extended state area.</summary>
    public byte[] GetXsave()
    {
        bool xsave2 = Vm.CheckExtension(KvmIoctls.CapXsave2) > 0;
        byte[] area = new byte[xsave2 ? Vm.XsaveSize : 4096];
        fixed (byte* buffer = area)
        {
            // SAFETY: buffer is pinned and as large as KVM_CAP_XSAVE2 says the kernel writes.
            KvmCall.Checked(_fd, xsave2 ? KvmIoctls.GetXsave2 : KvmIoctls.GetXsave, buffer, $"{(xsave2 ? "KVM_GET_XSAVE2" : "KVM_GET_XSAVE")} on vCPU {Id}");
        }

        return area;
    }

    /// <summary>KVM_SET_XSAVE from an area captured by <see cref="GetXsave"/>.</summary>
    public void SetXsave(ReadOnlySpan<byte> area)
    {
        if (area.Length < 4096)
        {
            throw new ArgumentException($"An xsave area for vCPU {Id} must be at least 4096 bytes, not {area.Length}.", nameof(area));
        }

        byte[] copy = area.ToArray();
        fixed (byte* buffer = copy)
        {
            // SAFETY: buffer is pinned, at least 4096 bytes, read by the kernel during the call only.
            KvmCall.Checked(_fd, KvmIoctls.SetXsave, buffer, $"KVM_SET_XSAVE on vCPU {Id}");
        }
    }

    /// <summary>
    /// KVM_RUN once. Returns 0 after a guest exit (read it from kvm_run), or the errno
    /// (EINTR when kicked, EAGAIN). vCPU thread only.
    /// </summary>
    internal int RunOnce()
    {
        int result = Libc.Ioctl(_fd, KvmIoctls.Run, 0);
        return result < 0 ? Marshal.GetLastPInvokeError() : 0;
    }

    /// <summary>KVM_SET_SIGNAL_MASK: the signal mask in effect while this vCPU is inside KVM_RUN (kernel sigset, 8 bytes).</summary>
    internal void SetSignalMask(ulong kernelSigset)
    {
        byte* buffer = stackalloc byte[sizeof(KvmSignalMaskHeader) + Libc.KernelSigsetBytes];
        ((KvmSignalMaskHeader*)buffer)->Len = Libc.KernelSigsetBytes;
        *(ulong*)(buffer + sizeof(KvmSignalMaskHeader)) = kernelSigset;
        // SAFETY: buffer is a kvm_signal_mask with len = 8 followed by the 8-byte kernel sigset.
        KvmCall.Checked(_fd, KvmIoctls.SetSignalMask, buffer, $"KVM_SET_SIGNAL_MASK on vCPU {Id}");
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _run.Dispose();
        _fd.Dispose();
    }
}
