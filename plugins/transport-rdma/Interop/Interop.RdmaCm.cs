using System.Runtime.InteropServices;

namespace Modular.Transports.Rdma.Interop;

/// <summary>
/// librdmacm (rdma-core): connection management over IP addresses. Every returned pointer is owned by
/// a SafeHandle in <c>RdmaCmHandles.cs</c>.
/// </summary>
internal static partial class RdmaCm
{
    /// <summary>The soname; Debian's librdmacm1 package provides it.</summary>
    internal const string Library = "librdmacm.so.1";

    [LibraryImport(Library, SetLastError = true)]
    internal static partial nint rdma_create_event_channel();

    [LibraryImport(Library)]
    internal static partial void rdma_destroy_event_channel(nint channel);

    [LibraryImport(Library, SetLastError = true)]
    internal static unsafe partial int rdma_create_id(nint channel, nint* id, nint context, int portSpace);

    [LibraryImport(Library, SetLastError = true)]
    internal static partial int rdma_destroy_id(nint id);

    [LibraryImport(Library, SetLastError = true)]
    internal static unsafe partial int rdma_bind_addr(nint id, byte* address);

    [LibraryImport(Library, SetLastError = true)]
    internal static partial int rdma_listen(nint id, int backlog);

    [LibraryImport(Library, SetLastError = true)]
    internal static unsafe partial int rdma_resolve_addr(nint id, byte* source, byte* destination, int timeoutMs);

    [LibraryImport(Library, SetLastError = true)]
    internal static partial int rdma_resolve_route(nint id, int timeoutMs);

    [LibraryImport(Library, SetLastError = true)]
    internal static unsafe partial int rdma_create_qp(nint id, nint pd, IbvQpInitAttr* initAttr);

    [LibraryImport(Library)]
    internal static partial void rdma_destroy_qp(nint id);

    [LibraryImport(Library, SetLastError = true)]
    internal static unsafe partial int rdma_connect(nint id, RdmaConnParam* param);

    [LibraryImport(Library, SetLastError = true)]
    internal static unsafe partial int rdma_accept(nint id, RdmaConnParam* param);

    [LibraryImport(Library, SetLastError = true)]
    internal static partial int rdma_reject(nint id, nint privateData, byte privateDataLength);

    [LibraryImport(Library, SetLastError = true)]
    internal static partial int rdma_disconnect(nint id);

    [LibraryImport(Library, SetLastError = true)]
    internal static unsafe partial int rdma_get_cm_event(nint channel, nint* cmEvent);

    [LibraryImport(Library, SetLastError = true)]
    internal static partial int rdma_ack_cm_event(nint cmEvent);

    [LibraryImport(Library, SetLastError = true)]
    internal static partial int rdma_migrate_id(nint id, nint channel);

    /// <summary>The local port of a bound id, in network byte order.</summary>
    [LibraryImport(Library)]
    internal static partial ushort rdma_get_src_port(nint id);

    [LibraryImport(Library)]
    internal static partial nint rdma_event_str(int eventType);

    /// <summary>The name librdmacm gives an event type, e.g. RDMA_CM_EVENT_REJECTED.</summary>
    internal static string EventName(int eventType) =>
        Marshal.PtrToStringUTF8(rdma_event_str(eventType)) ?? "event " + eventType;
}
