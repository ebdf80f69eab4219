using Modular.Abstractions.Memory;
using Modular.Core.Interop;
using Modular.Core.Memory;

namespace Modular.Core.Kvm;

/// <summary>
/// A KVM VM fd: memory slots, dirty log, VM clock, and the factory for <see cref="KvmVcpu"/>.
/// Slot changes and vCPU creation happen on the machine-setup thread; the dirty log methods are
/// called from the migration thread.
/// </summary>
public sealed unsafe class KvmVm : IDisposable
{
    private readonly SafeFileDescriptor _fd;
    private uint _nextSlot;

    internal KvmVm(KvmSystem system, SafeFileDescriptor fd)
    {
        System = system;
        _fd = fd;
    }

    /// <summary>The system this VM was created from.</summary>
    public KvmSystem System { get; }

    /// <summary>True once KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 is enabled: KVM_GET_DIRTY_LOG then no longer re-protects, KVM_CLEAR_DIRTY_LOG does.</summary>
    public bool ManualDirtyLogProtect { get; private set; }

    /// <summary>Bytes of struct kvm_xsave that KVM_GET_XSAVE2 fills (KVM_CAP_XSAVE2 on the VM fd; at least 4096).</summary>
    public int XsaveSize
    {
        get
        {
            int size = CheckExtension(KvmIoctls.CapXsave2);
            return Math.Max(size, 4096);
        }
    }

    internal SafeFileDescriptor Handle => _fd;

    /// <summary>KVM_CHECK_EXTENSION on the VM fd (some answers, such as KVM_CAP_XSAVE2, are per VM).</summary>
    public int CheckExtension(int capability) =>
        KvmCall.Checked(_fd, KvmIoctls.CheckExtension, capability, $"KVM_CHECK_EXTENSION({capability}) on the VM");

    /// <summary>KVM_SET_USER_MEMORY_REGION: maps host memory at a guest-physical address (size 0 deletes the slot).</summary>
    public void SetUserMemoryRegion(uint slot, uint flags, GuestPhysicalAddress guestAddress, ulong size, nint hostAddress)
    {
        var region = new KvmUserspaceMemoryRegion
        {
            Slot = slot,
            Flags = flags,
            GuestPhysAddr = guestAddress.Value,
            MemorySize = size,
            UserspaceAddr = (ulong)hostAddress,
        };
        KvmCall.Set(_fd, KvmIoctls.SetUserMemoryRegion, region, $"KVM_SET_USER_MEMORY_REGION slot {slot} at {guestAddress} ({size} bytes)");
    }

    /// <summary>KVM_ENABLE_CAP(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2): fetching the log no longer re-protects pages; <see cref="ClearDirtyLog"/> does.</summary>
    public void EnableManualDirtyLogProtect()
    {
        if (ManualDirtyLogProtect)
        {
            return;
        }

        var cap = new KvmEnableCap { Cap = KvmIoctls.CapManualDirtyLogProtect2 };
        cap.Args[0] = KvmIoctls.DirtyLogManualProtectEnable;
        KvmCall.Set(_fd, KvmIoctls.EnableCap, cap, "KVM_ENABLE_CAP(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) on the VM");
        ManualDirtyLogProtect = true;
    }

    /// <summary>
    /// Maps every region of every block of <paramref name="ram"/> into its own KVM slot, with dirty
    /// logging (manual protect) when <paramref name="logDirty"/>, and connects the KVM dirty log to
    /// <see cref="GuestRam.SyncDirtyBitmap"/>. Call once, before the vCPUs run.
    /// </summary>
    public void MapRam(GuestRam ram, bool logDirty)
    {
        ArgumentNullException.ThrowIfNull(ram);
        if (logDirty && CheckExtension(KvmIoctls.CapManualDirtyLogProtect2) != 0)
        {
            EnableManualDirtyLogProtect();
        }

        var slots = new List<KvmDirtyLogSlot>();
        foreach (RamBlock block in ram.Blocks)
        {
            foreach (RamRegion region in block.Regions)
            {
                uint slot = _nextSlot++;
                SetUserMemoryRegion(slot, logDirty ? KvmIoctls.MemLogDirtyPages : 0, region.GuestBase, region.Size,
                    block.HostAddress + (nint)region.BlockOffset);
                slots.Add(new KvmDirtyLogSlot(slot, block, region));
            }
        }

        if (logDirty)
        {
            ram.AttachDirtyLog(new KvmDirtyLogReader(this, slots));
        }
    }

    /// <summary>KVM_GET_DIRTY_LOG for <paramref name="slot"/> into <paramref name="bitmap"/> (one bit per 4 KiB page, 64-bit words).</summary>
    public void GetDirtyLog(uint slot, Span<ulong> bitmap)
    {
        fixed (ulong* words = bitmap)
        {
            var log = new KvmDirtyLog { Slot = slot, DirtyBitmap = (nint)words };
            // SAFETY: words is pinned for the call and as long as the slot's bitmap (callers size it from the slot).
            KvmCall.Checked(_fd, KvmIoctls.GetDirtyLog, &log, $"KVM_GET_DIRTY_LOG slot {slot}");
        }
    }

    /// <summary>KVM_CLEAR_DIRTY_LOG: re-protects the pages set in <paramref name="bitmap"/> (bit 0 = <paramref name="firstPage"/>); first page and count must be multiples of 64 unless the range ends the slot.</summary>
    public void ClearDirtyLog(uint slot, ulong firstPage, uint pageCount, ReadOnlySpan<ulong> bitmap)
    {
        fixed (ulong* words = bitmap)
        {
            var clear = new KvmClearDirtyLog { Slot = slot, FirstPage = firstPage, NumPages = pageCount, DirtyBitmap = (nint)words };
            // SAFETY: words is pinned for the call and covers pageCount bits.
            KvmCall.Checked(_fd, KvmIoctls.ClearDirtyLog, &clear, $"KVM_CLEAR_DIRTY_LOG slot {slot} pages {firstPage}+{pageCount}");
        }
    }

    /// <summary>KVM_GET_CLOCK: the VM's kvmclock.</summary>
    public KvmClockData GetClock() => KvmCall.Get<KvmClockData>(_fd, KvmIoctls.GetClock, "KVM_GET_CLOCK on the VM");

    /// <summary>KVM_SET_CLOCK: sets the VM's kvmclock (flags other than the clock value are cleared).</summary>
    public void SetClock(KvmClockData clock)
    {
        var value = new KvmClockData { Clock = clock.Clock };
        KvmCall.Set(_fd, KvmIoctls.SetClock, value, "KVM_SET_CLOCK on the VM");
    }

    /// <summary>KVM_CREATE_VCPU with the host's supported CPUID set (KVM_GET_SUPPORTED_CPUID then KVM_SET_CPUID2 and the read-back table kept).</summary>
    public KvmVcpu CreateVcpu(int id) => CreateVcpu(id, System.GetSupportedCpuid());

    /// <summary>KVM_CREATE_VCPU with a given CPUID table (for example one saved from another vCPU).</summary>
    public KvmVcpu CreateVcpu(int id, IReadOnlyList<KvmCpuidEntry2> cpuid)
    {
        ArgumentNullException.ThrowIfNull(cpuid);
        int vcpuFd = KvmCall.Checked(_fd, KvmIoctls.CreateVcpu, id, $"KVM_CREATE_VCPU {id}");
        var vcpu = new KvmVcpu(this, id, new SafeFileDescriptor(vcpuFd));
        try
        {
            vcpu.SetCpuid(cpuid.ToArray());

            // Fetched (and cached) now: a migration's state capture runs with the guest stopped.
            _ = System.GetMsrIndexList();
            return vcpu;
        }
        catch
        {
            vcpu.Dispose();
            throw;
        }
    }

    /// <inheritdoc />
    public void Dispose() => _fd.Dispose();
}
