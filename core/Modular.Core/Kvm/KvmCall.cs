using System.Runtime.InteropServices;
using Modular.Core.Interop;

namespace Modular.Core.Kvm;

/// <summary>Issues a KVM ioctl and turns -1 into a <see cref="KvmIoctlException"/> naming the call.</summary>
internal static unsafe class KvmCall
{
    /// <summary>ioctl with a pointer argument; returns the non-negative result.</summary>
    internal static int Checked(SafeFileDescriptor fd, nuint request, void* argument, string operation)
    {
        int result = Libc.Ioctl(fd, request, argument);
        if (result < 0)
        {
            throw new KvmIoctlException(operation, Marshal.GetLastPInvokeError());
        }

        return result;
    }

    /// <summary>ioctl with an integer argument; returns the non-negative result.</summary>
    internal static int Checked(SafeFileDescriptor fd, nuint request, nint argument, string operation)
    {
        int result = Libc.Ioctl(fd, request, argument);
        if (result < 0)
        {
            throw new KvmIoctlException(operation, Marshal.GetLastPInvokeError());
        }

        return result;
    }

    /// <summary>Reads a fixed-size struct with a GET ioctl.</summary>
    internal static T Get<T>(SafeFileDescriptor fd, nuint request, string operation)
        where T : unmanaged
    {
        T value = default;
        // SAFETY: value is a local of the exact struct size the ioctl number encodes (KvmAbiTests).
        Checked(fd, request, &value, operation);
        return value;
    }

    /// <summary>Writes a fixed-size struct with a SET ioctl.</summary>
    internal static void Set<T>(SafeFileDescriptor fd, nuint request, in T value, string operation)
        where T : unmanaged
    {
        // SAFETY: the pointer is to a pinned readonly local copy, read by the kernel during the call only.
        T copy = value;
        Checked(fd, request, &copy, operation);
    }
}
