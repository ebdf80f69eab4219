using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Modular.Abstractions.Devices;
using Modular.Abstractions.Memory;
using Modular.Core.Accel;
using Modular.Core.Boot;
using Modular.Core.Config;
using Modular.Core.Devices;
using Modular.Core.Kvm;
using Modular.Core.Memory;
using Modular.Core.Plugins;
using Modular.Core.Qmp;

namespace Modular.Core.Machine;

/// <summary>How a machine starts.</summary>
public enum MachineStartMode
{
    /// <summary>Not a valid mode.</summary>
    Invalid = 0,

    /// <summary>Load the kernel and boot it.</summary>
    Boot = 1,

    /// <summary>Load nothing: RAM and state will arrive from an incoming migration (QEMU's -incoming).</summary>
    Incoming = 2,
}

/// <summary>
/// One virtual machine: guest RAM, the device bus with the devices the config names (built by their
/// plugins), and an accelerator (KVM or synthetic) that runs the guest. It implements the QMP machine
/// commands and raises QEMU's events (STOP, RESUME, SHUTDOWN) through <see cref="EventRaised"/>.
/// </summary>
public sealed partial class VirtualMachine : IQmpMachine, IDisposable
{
    private readonly ILogger _logger;
    private readonly List<IDeviceModel> _devices = new();
    private readonly TaskCompletionSource<int> _exit = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly object _stateGate = new();
    private IAccelerator? _accelerator;
    private QmpRunState _runState;
    private bool _startWhenIncomingEnds;

    private VirtualMachine(ModularConfig config, GuestRam ram, ILogger logger)
    {
        Config = config;
        Ram = ram;
        _logger = logger;
        Bus = new IoBus();
        CpuThrottle = new CpuThrottle(sleep => _accelerator?.Throttle(sleep));
    }

    /// <summary>The config the machine was built from.</summary>
    public ModularConfig Config { get; }

    /// <summary>Guest RAM.</summary>
    public GuestRam Ram { get; }

    /// <summary>The port-I/O and MMIO bus.</summary>
    public IoBus Bus { get; }

    /// <summary>The devices, in config order.</summary>
    public IReadOnlyList<IDeviceModel> Devices => _devices;

    /// <summary>What runs the guest, for people ("KVM (...)" or "synthetic accelerator (...)").</summary>
    public string AcceleratorDescription => Accelerator.Description;

    /// <summary>The RAM layout (guest-physical ranges) of this machine.</summary>
    public IReadOnlyList<GuestRamRange> RamLayout { get; private set; } = [];

    /// <summary>Raised for every QMP event the machine emits (name, data). Any thread.</summary>
    public event Action<string, JsonObject?>? EventRaised;

    /// <summary>Completes with the process exit code when the machine ends (debug-exit code, 0 on quit, 1 on a fatal vCPU error).</summary>
    public Task<int> Exited => _exit.Task;

    /// <summary>The fatal error that ended the machine, if any.</summary>
    public string? FatalError { get; private set; }

    /// <inheritdoc />
    public QmpRunState RunState
    {
        get
        {
            lock (_stateGate)
            {
                return _runState;
            }
        }
    }

    /// <inheritdoc />
    public IGuestMemory Memory => Ram;

    internal IAccelerator Accelerator => _accelerator ?? throw new InvalidOperationException("The machine has no accelerator yet.");

    /// <summary>CPU throttling of this machine's vCPUs (auto-converge).</summary>
    public CpuThrottle CpuThrottle { get; }

    /// <summary>The kernel thread id of each vCPU's thread (0 before it started); see <see cref="IAccelerator.VcpuThreadIds"/>.</summary>
    internal int[] VcpuThreadIds() => Accelerator.VcpuThreadIds();

    /// <summary>Before a resume: every vCPU thread notes when it leaves its park (KVM only; see <see cref="LastVcpuResumedAt"/>).</summary>
    internal void WatchVcpuResumes() => (Accelerator as KvmAccelerator)?.WatchVcpuResumes();

    /// <summary>
    /// True once a vCPU thread has left its park since <see cref="WatchVcpuResumes"/> (KVM); always
    /// true without KVM, which has no such moment to watch. Takes no lock (the postcopy listen thread
    /// asks: a lock a vCPU holds while it waits for a missing page would deadlock them); any thread.
    /// </summary>
    internal bool GuestRanSinceResumeWatch() =>
        _accelerator is not KvmAccelerator kvm || kvm.AnyVcpuResumed();

    /// <summary>
    /// The Stopwatch timestamp at which the last vCPU thread left its park since <see cref="WatchVcpuResumes"/>:
    /// when the guest really ran again. Null until every started vCPU thread has, or without KVM.
    /// </summary>
    internal long? LastVcpuResumedAt() =>
        (Accelerator as KvmAccelerator)?.VcpuResumedAt() is { Length: > 0 } resumed && !resumed.Contains(0) ? resumed.Max() : null;

    /// <summary>
    /// The savevm sections of the machine's state besides RAM: every device (in config order), then
    /// the vCPU sections. Throws when a device declared itself unmigratable.
    /// </summary>
    /// <exception cref="InvalidOperationException">A device cannot migrate; the message names it and why.</exception>
    public IReadOnlyList<ISaveVmSection> StateSections()
    {
        var sections = new List<ISaveVmSection>();
        foreach (IDeviceModel device in _devices)
        {
            DeviceMigration migration = device.Migration;
            if (migration.Section is null)
            {
                throw new InvalidOperationException($"Device '{device.Id}' cannot migrate: {migration.UnmigratableReason}. Remove it from the config to migrate this machine.");
            }

            sections.Add(migration.Section);
        }

        sections.AddRange(Accelerator.StateSections);
        return sections;
    }

    /// <summary>
    /// Builds a machine from <paramref name="config"/>: RAM, devices from their plugins, the accelerator,
    /// and (in <see cref="MachineStartMode.Boot"/>) the kernel. Nothing runs until <see cref="Start"/>.
    /// </summary>
    /// <param name="config">A validated config.</param>
    /// <param name="plugins">Where device types are looked up.</param>
    /// <param name="mode">Boot the kernel, or wait for an incoming migration.</param>
    /// <param name="loggers">Logging.</param>
    /// <exception cref="MachineCreationException">Anything in the way; the message names it and what to do.</exception>
    public static VirtualMachine Create(ModularConfig config, PluginCatalog plugins, MachineStartMode mode, ILoggerFactory? loggers = null) =>
        Create(config, plugins, mode, loggers, KvmSystem.DefaultPath, HostMemory.Read());

    /// <summary>As the public overload, with the KVM device and the host's memory (for tests) given.</summary>
    /// <param name="config">A validated config.</param>
    /// <param name="plugins">Where device types are looked up.</param>
    /// <param name="mode">Boot the kernel, or wait for an incoming migration.</param>
    /// <param name="loggers">Logging.</param>
    /// <param name="kvmPath">The KVM device, normally /dev/kvm.</param>
    /// <param name="hostMemory">The host's RAM and swap in bytes (null: unknown, not checked).</param>
    internal static VirtualMachine Create(ModularConfig config, PluginCatalog plugins, MachineStartMode mode, ILoggerFactory? loggers, string kvmPath, (ulong Ram, ulong Swap)? hostMemory)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(plugins);
        loggers ??= NullLoggerFactory.Instance;
        MachineConfig m = config.Machine;
        if (mode == MachineStartMode.Boot && m.Accelerator == "kvm" && m.Kernel is null)
        {
            throw new MachineCreationException("No kernel to boot: set machine.kernel in the config or pass --kernel FILE (a Multiboot v1 image such as guests/ab-guest.elf), or start with --incoming URI to receive a migrated guest.", null, isConfigError: true);
        }

        HostMemory.CheckFits(m.MemoryBytes, hostMemory);
        GuestRam ram;
        try
        {
            ram = GuestRam.Create(m.MemoryBytes, BackingFor(m, mode));
        }
        catch (GuestRamAllocationException ex)
        {
            throw new MachineCreationException($"machine.memory: {ex.Message}", ex);
        }

        var machine = new VirtualMachine(config, ram, loggers.CreateLogger("machine"));
        try
        {
            machine.Build(plugins, mode, loggers, kvmPath);
            return machine;
        }
        catch
        {
            machine.Dispose();
            throw;
        }
    }

    /// <summary>machine.hugepages, else machine.memory-backend; "auto" is shared memory for a destination (--incoming), private otherwise.</summary>
    internal static GuestRamBacking BackingFor(MachineConfig machine, MachineStartMode mode) => machine switch
    {
        { Hugepages: true } => GuestRamBacking.HugeTlb2M,
        { MemoryBackend: "memfd" } => GuestRamBacking.SharedMemfd,
        { MemoryBackend: "auto" } when mode == MachineStartMode.Incoming => GuestRamBacking.SharedMemfd,
        _ => GuestRamBacking.Anonymous,
    };

    private void Build(PluginCatalog plugins, MachineStartMode mode, ILoggerFactory loggers, string kvmPath)
    {
        MachineConfig m = Config.Machine;
        RamLayout = PcRamLayout.For(m.MemoryBytes);
        var context = new DeviceContext(this);
        foreach (DeviceConfig deviceConfig in Config.Devices)
        {
            IDeviceModel device;
            try
            {
                device = plugins.GetDeviceModel(deviceConfig.Type).Create(deviceConfig, context);
            }
            catch (PluginException ex)
            {
                throw new MachineCreationException($"{deviceConfig.Path}.type: {ex.Message}", ex, isConfigError: true);
            }
            catch (DeviceConfigException ex)
            {
                throw new MachineCreationException(ex.Message, ex, isConfigError: true);
            }

            _devices.Add(device);
            try
            {
                Bus.Add(device);
            }
            catch (IoBusAttachException ex)
            {
                throw new MachineCreationException($"{deviceConfig.Path}: {ex.Message}", ex, isConfigError: true);
            }
        }

        if (m.Accelerator == "synthetic")
        {
            _accelerator = new SyntheticWorkload(Ram, m.SyntheticPagesPerSecond);
        }
        else
        {
            KvmAccelerator kvm;
            try
            {
                kvm = new KvmAccelerator(kvmPath, Ram, Bus, m.Vcpus, loggers.CreateLogger("kvm"), OnGuestHalted, OnFatal);
            }
            catch (KvmUnavailableException ex)
            {
                throw new MachineCreationException(ex.Message, ex);
            }
            catch (KvmIoctlException ex)
            {
                // E.g. a memory slot larger than KVM allows (KVM_MEM_MAX_NR_PAGES: 8 TiB per slot).
                throw new MachineCreationException(
                    $"KVM could not set up a VM with {ByteSize.Format(m.MemoryBytes)} of RAM and {m.Vcpus} vCPU(s): {ex.Message} Choose less memory or fewer vCPUs, or run with machine.accelerator: \"synthetic\".", ex);
            }

            _accelerator = kvm;
            if (mode == MachineStartMode.Boot)
            {
                MultibootBoot boot;
                try
                {
                    boot = MultibootImage.ReadFile(m.Kernel!).Load(Ram, RamLayout);
                }
                catch (Exception ex) when (ex is FileNotFoundException or DirectoryNotFoundException)
                {
                    throw new MachineCreationException($"machine.kernel: {m.Kernel} does not exist; give the path of a Multiboot v1 image (such as guests/ab-guest.elf beside the modular executable) in machine.kernel or --kernel.", ex, isConfigError: true);
                }
                catch (Exception ex) when (ex is MultibootImageException or MultibootLoadException or IOException or UnauthorizedAccessException)
                {
                    throw new MachineCreationException($"machine.kernel: {ex.Message}", ex, isConfigError: true);
                }

                kvm.SetBootState(boot);
            }
        }

        lock (_stateGate)
        {
            _runState = mode == MachineStartMode.Incoming ? QmpRunState.InMigrate : QmpRunState.Prelaunch;
            _startWhenIncomingEnds = !m.Paused;
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        CpuThrottle.Dispose();
        _accelerator?.Dispose();
        foreach (IDeviceModel device in _devices)
        {
            device.Dispose();
        }

        Ram.Dispose();
        _exit.TrySetResult(0);
    }

    private void Emit(string name, JsonObject? data = null) => EventRaised?.Invoke(name, data);

    private sealed class DeviceContext(VirtualMachine machine) : IDeviceContext
    {
        public IGuestMemory Memory => machine.Ram;

        public void RequestExit(int exitCode) => machine.RequestExit(exitCode, "guest-shutdown");
    }
}

/// <summary>A machine could not be built. The message names the config key or file and what to do.</summary>
public sealed class MachineCreationException : Exception
{
    /// <summary>Creates the exception.</summary>
    public MachineCreationException() { }

    /// <summary>Creates the exception with a message.</summary>
    /// <param name="message">Names the config key or file and what to do.</param>
    public MachineCreationException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and cause.</summary>
    /// <param name="message">Names the config key or file and what to do.</param>
    /// <param name="innerException">The cause.</param>
    public MachineCreationException(string message, Exception innerException) : base(message, innerException) { }

    /// <summary>Creates the exception, saying whether the config is at fault.</summary>
    /// <param name="message">Names the config key or file and what to do.</param>
    /// <param name="innerException">The cause, if any.</param>
    /// <param name="isConfigError">True when the config (not the host) is at fault.</param>
    public MachineCreationException(string message, Exception? innerException, bool isConfigError) : base(message, innerException) => IsConfigError = isConfigError;

    /// <summary>True when the config is at fault (exit code 2), false when the host is (exit code 1).</summary>
    public bool IsConfigError { get; }
}
