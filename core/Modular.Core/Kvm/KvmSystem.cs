using System.Runtime.InteropServices;
using Modular.Core.Interop;

namespace Modular.Core.Kvm;

/// <summary>
/// The KVM system fd (<c>/dev/kvm</c>): API checks, capabilities, supported CPUID and MSR list,
/// and the factory for <see cref="KvmVm"/>. Thread-safe after construction.
/// </summary>
public sealed unsafe class KvmSystem : IDisposable
{
    /// <summary>Where KVM lives on Linux.</summary>
    public const string DefaultPath = "/dev/kvm";

    private readonly SafeFileDescriptor _fd;
    private KvmCpuidEntry2[]? _supportedCpuid;
    private uint[]? _msrIndexList;

    private KvmSystem(SafeFileDescriptor fd, string path, int apiVersion, int vcpuMmapSize)
    {
        _fd = fd;
        Path = path;
        ApiVersion = apiVersion;
        VcpuMmapSize = vcpuMmapSize;
    }

    /// <summary>The device path this was opened from.</summary>
    public string Path { get; }

    /// <summary>KVM_GET_API_VERSION (12 on every supported kernel).</summary>
    public int ApiVersion { get; }

    /// <summary>KVM_GET_VCPU_MMAP_SIZE: bytes to map from each vCPU fd (struct kvm_run and its data pages).</summary>
    public int VcpuMmapSize { get; }

    internal SafeFileDescriptor Handle => _fd;

    /// <summary>Opens KVM, checks the API version and the capabilities the VMM relies on.</summary>
    /// <param name="path">The device, normally <see cref="DefaultPath"/>.</param>
    /// <exception cref="KvmUnavailableException">KVM is missing, not permitted, or unsuitable; the message says what to do.</exception>
    public static KvmSystem Open(string path = DefaultPath)
    {
        int raw = Libc.Open(path, Libc.O_RDWR | Libc.O_CLOEXEC);
        if (raw < 0)
        {
            throw KvmUnavailableException.ForOpenError(path, Marshal.GetLastPInvokeError());
        }

        var fd = new SafeFileDescriptor(raw);
        try
        {
            int api = KvmCall.Checked(fd, KvmIoctls.GetApiVersion, 0, $"KVM_GET_API_VERSION on {path}");
            if (api != KvmIoctls.ApiVersion)
            {
                throw new KvmUnavailableException(
                    $"{path} speaks KVM API version {api}, but Modular needs version {KvmIoctls.ApiVersion}. {KvmUnavailableException.SyntheticAdvice}");
            }

            foreach ((int cap, string name) in new[]
            {
                (KvmIoctls.CapUserMemory, "KVM_CAP_USER_MEMORY"),
                (KvmIoctls.CapImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
            })
            {
                if (KvmCall.Checked(fd, KvmIoctls.CheckExtension, cap, $"KVM_CHECK_EXTENSION({name}) on {path}") <= 0)
                {
                    throw new KvmUnavailableException(
                        $"{path} lacks {name}, which Modular needs (kernel too old?). {KvmUnavailableException.SyntheticAdvice}");
                }
            }

            int mmapSize = KvmCall.Checked(fd, KvmIoctls.GetVcpuMmapSize, 0, $"KVM_GET_VCPU_MMAP_SIZE on {path}");
            return new KvmSystem(fd, path, api, mmapSize);
        }
        catch
        {
            fd.Dispose();
            throw;
        }
    }

    /// <summary>KVM_CHECK_EXTENSION on the system fd: 0 when absent, otherwise a capability-specific value.</summary>
    public int CheckExtension(int capability) =>
        KvmCall.Checked(_fd, KvmIoctls.CheckExtension, capability, $"KVM_CHECK_EXTENSION({capability}) on {Path}");

    /// <summary>KVM_CREATE_VM (machine type 0).</summary>
    public KvmVm CreateVm()
    {
        int vmFd = KvmCall.Checked(_fd, KvmIoctls.CreateVm, 0, $"KVM_CREATE_VM on {Path}");
        return new KvmVm(this, new SafeFileDescriptor(vmFd));
    }

    /// <summary>KVM_GET_SUPPORTED_CPUID, growing the buffer while the kernel answers E2BIG. Cached.</summary>
    public IReadOnlyList<KvmCpuidEntry2> GetSupportedCpuid() =>
        _supportedCpuid ??= KvmCpuidTable.Fetch(_fd, KvmIoctls.GetSupportedCpuid, $"KVM_GET_SUPPORTED_CPUID on {Path}");

    /// <summary>The list of <see cref="GetMsrIndexList"/> as a span (no copy, no LINQ: used inside a migration's downtime).</summary>
    internal ReadOnlySpan<uint> MsrIndices
    {
        get
        {
            _ = GetMsrIndexList();
            return _msrIndexList;
        }
    }

    /// <summary>KVM_GET_MSR_INDEX_LIST: the MSRs a vCPU's state includes. Cached.</summary>
    public IReadOnlyList<uint> GetMsrIndexList()
    {
        if (_msrIndexList is not null)
        {
            return _msrIndexList;
        }

        int count = 64;
        while (true)
        {
            uint[] buffer = new uint[1 + count];
            buffer[0] = (uint)count;
            fixed (uint* list = buffer)
            {
                // SAFETY: list points to struct kvm_msr_list with room for `count` indices; nmsrs says so.
                int result = Libc.Ioctl(_fd, KvmIoctls.GetMsrIndexList, list);
                if (result >= 0)
                {
                    _msrIndexList = buffer.AsSpan(1, (int)buffer[0]).ToArray();
                    return _msrIndexList;
                }

                int errno = Marshal.GetLastPInvokeError();
                if (errno != Libc.E2BIG)
                {
                    throw new KvmIoctlException($"KVM_GET_MSR_INDEX_LIST on {Path}", errno);
                }

                count = Math.Max((int)buffer[0], count * 2);
            }
        }
    }

    /// <inheritdoc />
    public void Dispose() => _fd.Dispose();
}
