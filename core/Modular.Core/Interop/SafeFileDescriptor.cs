using System.Runtime.InteropServices;

namespace Modular.Core.Interop;

/// <summary>Owns one Linux file descriptor (a KVM system, VM or vCPU fd, an eventfd) and closes it once.</summary>
public sealed class SafeFileDescriptor : SafeHandle
{
    /// <summary>Used by the interop marshaller.</summary>
    public SafeFileDescriptor()
        : base(-1, ownsHandle: true)
    {
    }

    internal SafeFileDescriptor(int fd)
        : base(-1, ownsHandle: true)
    {
        SetHandle(fd);
    }

    /// <inheritdoc />
    public override bool IsInvalid => handle < 0;

    /// <inheritdoc />
    protected override bool ReleaseHandle() => Libc.Close((int)handle) == 0;
}
