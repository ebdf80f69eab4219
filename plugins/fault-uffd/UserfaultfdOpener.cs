using System.Globalization;
using Modular.Abstractions.Faults;
using static Modular.FaultBackends.Userfaultfd.Interop.Libc;

namespace Modular.FaultBackends.Userfaultfd;

/// <summary>How a userfaultfd was obtained.</summary>
internal enum UffdOpenPath
{
    /// <summary>Not a valid value.</summary>
    Invalid = 0,

    /// <summary>The userfaultfd(2) system call.</summary>
    Syscall = 1,

    /// <summary>/dev/userfaultfd and its USERFAULTFD_IOC_NEW ioctl (Linux 6.1+).</summary>
    Device = 2,
}

/// <summary>What the kernel offered when a userfaultfd was opened and its API handshake done.</summary>
/// <param name="Path">How the descriptor was obtained.</param>
/// <param name="AvailableFeatures">UFFD_FEATURE_* bits the kernel reports as available.</param>
/// <param name="EnabledFeatures">UFFD_FEATURE_* bits this descriptor was opened with.</param>
/// <param name="Ioctls">The _UFFDIO_* bits UFFDIO_API reported.</param>
internal sealed record UffdCapabilities(UffdOpenPath Path, ulong AvailableFeatures, ulong EnabledFeatures, ulong Ioctls)
{
    /// <summary>True when page fault messages carry the faulting thread id.</summary>
    public bool ThreadIdEnabled => (EnabledFeatures & UffdAbi.FeatureThreadId) != 0;

    /// <summary>True when MISSING registration works on hugetlbfs (2 MiB pages).</summary>
    public bool HugetlbfsSupported => (AvailableFeatures & UffdAbi.FeatureMissingHugetlbfs) != 0;

    /// <summary>True when this descriptor was opened with UFFD_FEATURE_MINOR_SHMEM (UFFDIO_CONTINUE is then offered on shared ranges registered in minor mode).</summary>
    public bool MinorShmemEnabled => (EnabledFeatures & UffdAbi.FeatureMinorShmem) != 0;
}

/// <summary>
/// Opens a userfaultfd: first with userfaultfd(2), then through /dev/userfaultfd, and does the
/// UFFDIO_API handshake. Failures become one <see cref="FaultBackendException"/> that says what is
/// missing and what to do. Runs on whatever thread opens the backend (not a hot path).
/// </summary>
internal static class UserfaultfdOpener
{
    /// <summary>Where the userfaultfd device lives.</summary>
    public const string DevicePath = "/dev/userfaultfd";

    /// <summary>The sysctl that decides whether processes without CAP_SYS_PTRACE may call userfaultfd(2).</summary>
    public const string UnprivilegedSysctlPath = "/proc/sys/vm/unprivileged_userfaultfd";

    // Non-blocking so ReadFaults can drain messages and then poll; close-on-exec so child
    // processes never inherit the descriptor. No UFFD_USER_MODE_ONLY: KVM resolves vCPU accesses
    // to guest RAM with kernel-mode faults (get_user_pages), which a user-mode-only uffd refuses.
    private const int OpenFlags = O_CLOEXEC | O_NONBLOCK;

    /// <summary>Opens a userfaultfd and enables its API.</summary>
    /// <param name="only">Try only this path (tests); <see cref="UffdOpenPath.Invalid"/> tries both.</param>
    /// <param name="capabilities">What the kernel offered.</param>
    /// <exception cref="FaultBackendException">No path worked; the message says why.</exception>
    public static FileDescriptorHandle Open(UffdOpenPath only, out UffdCapabilities capabilities)
    {
        FileDescriptorHandle uffd = OpenDescriptor(only, out UffdOpenPath path);
        try
        {
            // Ask for thread ids and minor faults on shared memory. UFFDIO_API may succeed only once
            // per descriptor, so a kernel that refuses a feature (EINVAL: minor faults before 5.14,
            // thread ids before 4.14) needs a fresh descriptor for the next, smaller handshake.
            int errno = EINVAL;
            ulong available = 0, ioctls = 0, enabled = 0;
            ulong[] attempts = [UffdAbi.FeatureThreadId | UffdAbi.FeatureMinorShmem, UffdAbi.FeatureThreadId, 0];
            for (int i = 0; i < attempts.Length && errno == EINVAL; i++)
            {
                if (i > 0)
                {
                    uffd.Dispose();
                    uffd = OpenDescriptor(path, out path);
                }

                enabled = attempts[i];
                errno = Handshake(uffd, enabled, out available, out ioctls);
            }
            if (errno != 0)
            {
                throw new FaultBackendException(
                    $"The userfaultfd API handshake (UFFDIO_API, API 0xAA) failed with {Describe(errno)}. " +
                    "This kernel's userfaultfd is unusable for postcopy; use precopy only.");
            }
            const ulong needed = (1UL << UffdAbi.IoctlBitRegister) | (1UL << UffdAbi.IoctlBitUnregister);
            if ((ioctls & needed) != needed)
            {
                throw new FaultBackendException(
                    $"userfaultfd on this kernel offers no UFFDIO_REGISTER/UFFDIO_UNREGISTER (ioctl mask 0x{ioctls:x}). " +
                    "Postcopy cannot arm guest RAM here; use precopy only.");
            }
            capabilities = new UffdCapabilities(path, available, enabled, ioctls);
            return uffd;
        }
        catch
        {
            uffd.Dispose();
            throw;
        }
    }

    private static unsafe int Handshake(FileDescriptorHandle uffd, ulong features, out ulong available, out ulong ioctls)
    {
        UffdAbi.UffdioApi api = new() { Api = UffdAbi.Api, Features = features };
        // SAFETY: api is a local uffdio_api; the kernel reads and writes exactly sizeof(uffdio_api).
        int errno = Ioctl(uffd, UffdAbi.IoctlApi, &api);
        available = api.Features;
        ioctls = api.Ioctls;
        return errno;
    }

    private static FileDescriptorHandle OpenDescriptor(UffdOpenPath only, out UffdOpenPath path)
    {
        int syscallErrno = -1;
        if (only != UffdOpenPath.Device)
        {
            FileDescriptorHandle uffd = OpenUserfaultfd(OpenFlags, out syscallErrno);
            if (!uffd.IsInvalid)
            {
                path = UffdOpenPath.Syscall;
                return uffd;
            }
            uffd.Dispose();
        }

        int deviceErrno = -1;
        if (only != UffdOpenPath.Syscall)
        {
            using FileDescriptorHandle device = Interop.Libc.Open(DevicePath, O_RDWR | O_CLOEXEC, out deviceErrno);
            if (!device.IsInvalid)
            {
                FileDescriptorHandle uffd = DeviceNewUserfaultfd(device, OpenFlags, out deviceErrno);
                if (!uffd.IsInvalid)
                {
                    path = UffdOpenPath.Device;
                    return uffd;
                }
                uffd.Dispose();
                deviceErrno = deviceErrno == ENOTTY ? ENOSYS : deviceErrno;
            }
        }
        throw new FaultBackendException(DescribeOpenFailure(syscallErrno, deviceErrno, ReadUnprivilegedSysctl()));
    }

    private static string? ReadUnprivilegedSysctl()
    {
        try
        {
            return File.ReadAllText(UnprivilegedSysctlPath).Trim();
        }
        catch (IOException)
        {
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>
    /// The message for a userfaultfd that could not be opened by either path.
    /// </summary>
    /// <param name="syscallErrno">errno of userfaultfd(2), or -1 when not tried.</param>
    /// <param name="deviceErrno">errno of opening /dev/userfaultfd or of USERFAULTFD_IOC_NEW, or -1 when not tried.</param>
    /// <param name="unprivilegedSysctl">The value of vm.unprivileged_userfaultfd, when readable.</param>
    internal static string DescribeOpenFailure(int syscallErrno, int deviceErrno, string? unprivilegedSysctl)
    {
        string sysctl = unprivilegedSysctl ?? "unknown";
        string syscallPart = syscallErrno switch
        {
            -1 => "userfaultfd(2) was not tried",
            ENOSYS => "this kernel has no userfaultfd(2) system call (ENOSYS: built without CONFIG_USERFAULTFD, or blocked by a seccomp filter)",
            EPERM => $"userfaultfd(2) was refused with EPERM: vm.unprivileged_userfaultfd = {sysctl}, so only a process with " +
                     "CAP_SYS_PTRACE may call it; run Modular with CAP_SYS_PTRACE or set `sysctl -w vm.unprivileged_userfaultfd=1` " +
                     "(UFFD_USER_MODE_ONLY would be allowed, but KVM vCPUs fault in kernel mode, so Modular cannot use it)",
            _ => $"userfaultfd(2) failed with {Describe(syscallErrno)}",
        };
        string devicePart = deviceErrno switch
        {
            -1 => $"{DevicePath} was not tried",
            ENOENT => $"{DevicePath} does not exist (it needs Linux 6.1 or newer)",
            EACCES or EPERM => $"{DevicePath} could not be opened ({Describe(deviceErrno)}): this user needs read-write permission on it (for example a group with rw access)",
            ENOSYS => $"{DevicePath} does not support USERFAULTFD_IOC_NEW",
            _ => $"{DevicePath} failed with {Describe(deviceErrno)}",
        };
        return string.Create(CultureInfo.InvariantCulture,
            $"userfaultfd is not usable, so postcopy cannot run on this host: {syscallPart}; and {devicePart}. Use precopy only, or fix one of these.");
    }
}
