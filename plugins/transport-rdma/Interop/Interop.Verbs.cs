using System.Runtime.InteropServices;

namespace Modular.Transports.Rdma.Interop;

/// <summary>
/// libibverbs (rdma-core): the exported functions the transport uses. The data-path calls
/// (post send/recv, poll, request notify) are not exported symbols but inline functions in
/// <c>verbs.h</c>; they live in <see cref="VerbsOps"/>. Every pointer here is owned by a SafeHandle in
/// <c>VerbsHandles.cs</c>; nothing outside the Interop folder sees a raw one.
/// </summary>
internal static partial class Verbs
{
    /// <summary>The soname; Debian's libibverbs1 package provides it.</summary>
    internal const string Library = "libibverbs.so.1";

    [LibraryImport(Library, SetLastError = true)]
    internal static unsafe partial nint ibv_get_device_list(int* numDevices);

    [LibraryImport(Library)]
    internal static partial void ibv_free_device_list(nint list);

    [LibraryImport(Library)]
    internal static partial nint ibv_get_device_name(nint device);

    [LibraryImport(Library, SetLastError = true)]
    internal static partial nint ibv_open_device(nint device);

    [LibraryImport(Library, SetLastError = true)]
    internal static partial int ibv_close_device(nint context);

    [LibraryImport(Library, SetLastError = true)]
    internal static partial nint ibv_alloc_pd(nint context);

    [LibraryImport(Library, SetLastError = true)]
    internal static partial int ibv_dealloc_pd(nint pd);

    /// <summary>The exported <c>ibv_reg_mr</c> (the header wraps it in a macro that picks it for constant access flags).</summary>
    [LibraryImport(Library, SetLastError = true)]
    internal static partial nint ibv_reg_mr(nint pd, nint addr, nuint length, int access);

    [LibraryImport(Library, SetLastError = true)]
    internal static partial int ibv_dereg_mr(nint mr);

    [LibraryImport(Library, SetLastError = true)]
    internal static partial nint ibv_create_comp_channel(nint context);

    [LibraryImport(Library, SetLastError = true)]
    internal static partial int ibv_destroy_comp_channel(nint channel);

    [LibraryImport(Library, SetLastError = true)]
    internal static partial nint ibv_create_cq(nint context, int cqe, nint cqContext, nint channel, int compVector);

    [LibraryImport(Library, SetLastError = true)]
    internal static partial int ibv_destroy_cq(nint cq);

    [LibraryImport(Library, SetLastError = true)]
    internal static unsafe partial int ibv_get_cq_event(nint channel, nint* cq, nint* cqContext);

    [LibraryImport(Library)]
    internal static partial void ibv_ack_cq_events(nint cq, uint count);

    [LibraryImport(Library)]
    internal static partial nint ibv_wc_status_str(int status);

    /// <summary>The text libibverbs gives for a work completion status, e.g. "transport retry counter exceeded".</summary>
    internal static string StatusText(int status)
    {
        try
        {
            return Marshal.PtrToStringUTF8(ibv_wc_status_str(status)) ?? "status " + status;
        }
        catch (DllNotFoundException)
        {
            return "status " + status;
        }
    }
}
