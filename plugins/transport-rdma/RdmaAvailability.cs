using System.Runtime.InteropServices;
using Modular.Abstractions.Plugins;
using Modular.Transports.Rdma.Interop;

namespace Modular.Transports.Rdma;

/// <summary>
/// Whether this host can run the rdma transport: the rdma-core libraries load and libibverbs lists at
/// least one device that opens. The reason, when not, says what to install or load.
/// </summary>
internal static class RdmaAvailability
{
    private const string HowToGetRdma =
        "load Soft-RoCE over a network interface (as root: `modprobe rdma_rxe; rdma link add rxe0 type rxe netdev lo`; " +
        "the rdma tool is in iproute2) or install an RDMA NIC with its kernel driver; see docs/rdma.md";

    /// <summary>Checks the host; no side effects beyond loading the libraries and opening/closing one device.</summary>
    internal static PluginAvailability Probe() => Probe(Verbs.Library, RdmaCm.Library);

    /// <summary>As <see cref="Probe()"/>, with the library names as parameters so the missing-library path is testable.</summary>
    internal static PluginAvailability Probe(string verbsLibrary, string rdmaCmLibrary)
    {
        if (MissingLibrary(verbsLibrary, "libibverbs1 (with ibverbs-providers for the device drivers)") is { } noVerbs)
        {
            return PluginAvailability.NotUsable(noVerbs);
        }

        if (MissingLibrary(rdmaCmLibrary, "librdmacm1") is { } noCm)
        {
            return PluginAvailability.NotUsable(noCm);
        }

        try
        {
            using DeviceListHandle? list = DeviceListHandle.TryGet(out int errno);
            if (list is null)
            {
                string cause = errno == 38
                    ? "the kernel has no RDMA support (no /sys/class/infiniband_verbs)"
                    : "libibverbs could not list devices";
                return PluginAvailability.NotUsable(
                    $"no RDMA device: ibv_get_device_list returned NULL (errno {errno}, {Marshal.GetPInvokeErrorMessage(errno)}); {cause}; {HowToGetRdma}.");
            }

            if (list.Count == 0)
            {
                return PluginAvailability.NotUsable($"no RDMA device: ibv_get_device_list found 0 devices; {HowToGetRdma}.");
            }

            try
            {
                using DeviceContextHandle context = DeviceContextHandle.Open(list, 0);
            }
            catch (Abstractions.Transports.TransportException e)
            {
                return PluginAvailability.NotUsable(
                    $"RDMA device {list.DeviceName(0)} cannot be opened: {e.Message}; check permissions on /dev/infiniband/uverbs* and the locked-memory limit (ulimit -l).");
            }

            return PluginAvailability.Usable;
        }
        catch (DllNotFoundException e)
        {
            return PluginAvailability.NotUsable($"rdma-core could not be loaded: {e.Message}; install libibverbs1, ibverbs-providers and librdmacm1.");
        }
        catch (EntryPointNotFoundException e)
        {
            return PluginAvailability.NotUsable($"rdma-core is too old: {e.Message}; install rdma-core 44 or newer (libibverbs1, librdmacm1).");
        }
    }

    private static string? MissingLibrary(string library, string package)
    {
        if (NativeLibrary.TryLoad(library, out nint handle))
        {
            NativeLibrary.Free(handle);
            return null;
        }

        return $"{library} is not installed: install the {package} package (Debian/Ubuntu: apt-get install {package.Split(' ')[0]}).";
    }
}
