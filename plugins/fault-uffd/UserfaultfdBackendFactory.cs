using Modular.Abstractions.Faults;
using Modular.Abstractions.Plugins;
using static Modular.FaultBackends.Userfaultfd.Interop.Libc;

namespace Modular.FaultBackends.Userfaultfd;

/// <summary>
/// The userfaultfd fault backend: Linux's way to let a process resolve its own page faults, which
/// is what postcopy needs on the destination. Stateless (a shared MEF part); every
/// <see cref="Open"/> makes a new userfaultfd.
/// </summary>
[FaultBackendMetadata("userfaultfd")]
public sealed class UserfaultfdBackendFactory : IFaultBackendFactory
{
    /// <summary>
    /// Checks that a userfaultfd can be opened (syscall, else /dev/userfaultfd), that the API
    /// handshake works, and that MISSING-mode registration with UFFDIO_COPY/ZEROPAGE/WAKE works on
    /// a small private mapping, which is unmapped again. Leaves nothing behind. Any thread.
    /// </summary>
    public PluginAvailability Probe()
    {
        try
        {
            using UserfaultfdBackend backend = UserfaultfdBackend.Open();
            ProbeRegistration(backend);
            return PluginAvailability.Usable;
        }
        catch (FaultBackendException e)
        {
            return PluginAvailability.NotUsable(e.Message);
        }
    }

    /// <inheritdoc />
    public IFaultBackend Open() => UserfaultfdBackend.Open();

    private static void ProbeRegistration(UserfaultfdBackend backend)
    {
        const ulong length = UffdAbi.SmallPageSize;
        nint mapping = Interop.Libc.Mmap(0, (nuint)length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (mapping == MapFailed)
        {
            throw new FaultBackendException(
                $"userfaultfd probe could not map a test page: {Describe(System.Runtime.InteropServices.Marshal.GetLastPInvokeError())}.");
        }
        try
        {
            HostRamRange range = new(mapping, length, UffdAbi.SmallPageSize);
            backend.Arm(range);
            backend.Disarm(range);
        }
        finally
        {
            _ = Munmap(mapping, (nuint)length);
        }
    }
}
