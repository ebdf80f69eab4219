using System.Runtime.InteropServices;

namespace Modular.Transports.Rdma.Interop;

/// <summary>The array ibv_get_device_list returns (freed with ibv_free_device_list).</summary>
internal sealed class DeviceListHandle : NativeHandle
{
    private DeviceListHandle() { }

    /// <summary>How many devices the list holds.</summary>
    internal int Count { get; private set; }

    /// <summary>Gets the device list; null with <paramref name="errno"/> set when libibverbs returns NULL.</summary>
    internal static unsafe DeviceListHandle? TryGet(out int errno)
    {
        int count = 0;
        // SAFETY: count is a local the call writes; the returned array is owned by the handle.
        nint list = Verbs.ibv_get_device_list(&count);
        errno = list == 0 ? Marshal.GetLastPInvokeError() : 0;
        if (list == 0)
        {
            return null;
        }

        var handle = new DeviceListHandle { Count = count };
        handle.Adopt(list);
        return handle;
    }

    /// <summary>The struct ibv_device* at <paramref name="index"/>, valid while this list lives.</summary>
    internal unsafe nint Device(int index)
    {
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)index, (uint)Count);
        // SAFETY: index is within the NULL-terminated array of Count pointers.
        return ((nint*)Pointer)[index];
    }

    /// <summary>The kernel name of the device at <paramref name="index"/> (e.g. rxe0, mlx5_0).</summary>
    internal string DeviceName(int index) => Marshal.PtrToStringUTF8(Verbs.ibv_get_device_name(Device(index))) ?? "?";

    protected override bool Free(nint pointer)
    {
        Verbs.ibv_free_device_list(pointer);
        return true;
    }
}

/// <summary>A device context from ibv_open_device (closed with ibv_close_device).</summary>
internal sealed class DeviceContextHandle : NativeHandle
{
    private DeviceContextHandle() { }

    internal static DeviceContextHandle Open(DeviceListHandle list, int index)
    {
        nint context = Verbs.ibv_open_device(list.Device(index));
        if (context == 0)
        {
            throw LastFailure($"ibv_open_device({list.DeviceName(index)})");
        }

        var handle = new DeviceContextHandle();
        handle.Adopt(context);
        return handle;
    }

    protected override bool Free(nint pointer) => Verbs.ibv_close_device(pointer) == 0;
}

/// <summary>A protection domain (ibv_alloc_pd / ibv_dealloc_pd).</summary>
internal sealed class ProtectionDomainHandle : NativeHandle
{
    private ProtectionDomainHandle() { }

    /// <summary>Allocates a PD on the device context of <paramref name="owner"/> (a connected rdma_cm id).</summary>
    internal static ProtectionDomainHandle Allocate(CmIdHandle owner)
    {
        nint pd = Verbs.ibv_alloc_pd(owner.VerbsContext);
        if (pd == 0)
        {
            throw LastFailure("ibv_alloc_pd");
        }

        var handle = new ProtectionDomainHandle();
        handle.Adopt(pd, owner);
        return handle;
    }

    protected override bool Free(nint pointer) => Verbs.ibv_dealloc_pd(pointer) == 0;
}

/// <summary>A registered memory region (ibv_reg_mr / ibv_dereg_mr). Keeps its PD and, when given, its buffer alive.</summary>
internal sealed class MemoryRegionHandle : NativeHandle
{
    private MemoryRegionHandle() { }

    /// <summary>Local key, for scatter/gather elements.</summary>
    internal uint Lkey { get; private set; }

    /// <summary>Remote key, for a peer's RDMA READ or WRITE.</summary>
    internal uint Rkey { get; private set; }

    /// <summary>Start of the registered range.</summary>
    internal nint Address { get; private set; }

    /// <summary>Length of the registered range.</summary>
    internal nuint Length { get; private set; }

    /// <summary>Registers <paramref name="length"/> bytes at <paramref name="address"/> with <paramref name="access"/> (IBV_ACCESS_*).</summary>
    /// <param name="pd">The protection domain the region belongs to.</param>
    /// <param name="address">Start of the memory.</param>
    /// <param name="length">Bytes to register.</param>
    /// <param name="access">IBV_ACCESS_* flags.</param>
    /// <param name="buffer">The owner of the memory when it is ours; null for memory owned elsewhere (guest RAM).</param>
    internal static unsafe MemoryRegionHandle Register(ProtectionDomainHandle pd, nint address, nuint length, int access, SafeHandle? buffer)
    {
        nint mr = Verbs.ibv_reg_mr(pd.Pointer, address, length, access);
        if (mr == 0)
        {
            throw LastFailure($"ibv_reg_mr(0x{address:x}, {length} bytes)");
        }

        var handle = new MemoryRegionHandle { Address = address, Length = length };
        // SAFETY: mr is the struct ibv_mr* just returned; lkey and rkey are plain fields at ABI-tested offsets.
        handle.Lkey = *(uint*)(mr + VerbsLayout.MrLkey);
        handle.Rkey = *(uint*)(mr + VerbsLayout.MrRkey);
        handle.Adopt(mr, buffer is null ? [pd] : [pd, buffer]);
        return handle;
    }

    protected override bool Free(nint pointer) => Verbs.ibv_dereg_mr(pointer) == 0;
}

/// <summary>A completion channel (ibv_create_comp_channel / ibv_destroy_comp_channel).</summary>
internal sealed class CompletionChannelHandle : NativeHandle
{
    private CompletionChannelHandle() { }

    /// <summary>The channel's file descriptor, readable when a completion event is pending.</summary>
    internal int Fd { get; private set; }

    internal static unsafe CompletionChannelHandle Create(CmIdHandle owner)
    {
        nint channel = Verbs.ibv_create_comp_channel(owner.VerbsContext);
        if (channel == 0)
        {
            throw LastFailure("ibv_create_comp_channel");
        }

        var handle = new CompletionChannelHandle();
        // SAFETY: channel is the struct ibv_comp_channel* just returned; fd is at an ABI-tested offset.
        handle.Fd = *(int*)(channel + VerbsLayout.CompChannelFd);
        handle.Adopt(channel, owner);
        return handle;
    }

    protected override bool Free(nint pointer) => Verbs.ibv_destroy_comp_channel(pointer) == 0;
}

/// <summary>A completion queue bound to a completion channel (ibv_create_cq / ibv_destroy_cq).</summary>
internal sealed class CompletionQueueHandle : NativeHandle
{
    private CompletionQueueHandle() { }

    internal static CompletionQueueHandle Create(CmIdHandle owner, CompletionChannelHandle channel, int entries)
    {
        nint cq = Verbs.ibv_create_cq(owner.VerbsContext, entries, 0, channel.Pointer, 0);
        if (cq == 0)
        {
            throw LastFailure($"ibv_create_cq({entries} entries)");
        }

        var handle = new CompletionQueueHandle();
        handle.Adopt(cq, channel);
        return handle;
    }

    /// <summary>
    /// Destroying a CQ requires every event taken with ibv_get_cq_event to be acknowledged first; the
    /// completion thread acknowledges each event as soon as it takes it.
    /// </summary>
    protected override bool Free(nint pointer) => Verbs.ibv_destroy_cq(pointer) == 0;
}
