using Microsoft.Win32.SafeHandles;

namespace Modular.FaultBackends.Userfaultfd;

/// <summary>Owns one file descriptor (a userfaultfd, an eventfd, /dev/userfaultfd) and closes it once.</summary>
internal sealed class FileDescriptorHandle : SafeHandleMinusOneIsInvalid
{
    /// <summary>Used by the interop marshaller; creates an invalid handle.</summary>
    public FileDescriptorHandle() : base(ownsHandle: true) { }

    /// <summary>Takes ownership of <paramref name="fd"/>.</summary>
    /// <param name="fd">An open file descriptor, or -1.</param>
    internal FileDescriptorHandle(int fd) : base(ownsHandle: true) => SetHandle(fd);

    /// <inheritdoc />
    protected override bool ReleaseHandle() => Interop.Libc.Close((int)handle) == 0;
}
