using Modular.Core.Interop;

namespace Modular.Core.Kvm;

/// <summary>
/// KVM cannot be used on this host: /dev/kvm is missing, not permitted, or speaks another API.
/// The message says how to fix it or to choose the synthetic accelerator.
/// </summary>
public sealed class KvmUnavailableException : Exception
{
    /// <summary>Creates the exception with a complete user-facing message.</summary>
    public KvmUnavailableException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with a complete user-facing message and its cause.</summary>
    public KvmUnavailableException(string message, Exception innerException)
        : base(message, innerException)
    {
    }

    /// <summary>The advice every message ends with.</summary>
    internal const string SyntheticAdvice =
        "To run without KVM, set machine.accelerator: \"synthetic\" in the VM config (no guest code runs; a workload thread dirties guest RAM instead).";

    internal static KvmUnavailableException ForOpenError(string path, int errno) => errno switch
    {
        Libc.ENOENT => new($"{path} does not exist: this host has no KVM (load the kvm module, or enable nested virtualization for this VM). {SyntheticAdvice}"),
        Libc.EACCES or Libc.EPERM => new($"{path} exists but this user may not open it ({Libc.DescribeErrno(errno)}): add the user to the group that owns {path} (often 'kvm') or run as root. {SyntheticAdvice}"),
        _ => new($"{path} could not be opened: {Libc.DescribeErrno(errno)}. {SyntheticAdvice}"),
    };
}

/// <summary>A KVM ioctl failed; the message names the ioctl, the object (VM, vCPU n, slot n) and errno.</summary>
public sealed class KvmIoctlException : Exception
{
    /// <summary>Creates the exception.</summary>
    /// <param name="operation">The ioctl and the object it was issued on, e.g. "KVM_SET_CPUID2 on vCPU 0".</param>
    /// <param name="errno">The errno the kernel returned.</param>
    public KvmIoctlException(string operation, int errno)
        : base($"{operation} failed: {Libc.DescribeErrno(errno)}.")
    {
        Operation = operation;
        Errno = errno;
    }

    /// <summary>Creates the exception with a message and no errno (for a short or inconsistent answer).</summary>
    public KvmIoctlException(string operation, string message)
        : base($"{operation} failed: {message}")
    {
        Operation = operation;
    }

    /// <summary>The ioctl and object, e.g. "KVM_SET_CPUID2 on vCPU 0".</summary>
    public string Operation { get; }

    /// <summary>The errno from the kernel, or 0.</summary>
    public int Errno { get; }
}
