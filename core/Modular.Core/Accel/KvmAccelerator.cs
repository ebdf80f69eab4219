using Microsoft.Extensions.Logging;
using Modular.Abstractions.Devices;
using Modular.Abstractions.Memory;
using Modular.Core.Boot;
using Modular.Core.Devices;
using Modular.Core.Interop;
using Modular.Core.Kvm;
using Modular.Core.Memory;
using Modular.Core.Vcpus;

namespace Modular.Core.Accel;

/// <summary>
/// Runs guest code on /dev/kvm: one VM, guest RAM mapped with dirty logging, one thread per vCPU whose
/// exits go to the machine's bus. Without an in-kernel irqchip there is no INIT/SIPI, so only vCPU 0
/// runs; the others exist (and migrate) parked, like application processors never started.
/// </summary>
internal sealed class KvmAccelerator : IAccelerator, IVcpuExitHandler
{
    private readonly KvmSystem _kvm;
    private readonly KvmVm _vm;
    private readonly List<KvmVcpu> _vcpus = new();
    private readonly List<VcpuThread> _threads = new();
    private readonly IoBus _bus;
    private readonly ILogger _logger;
    private readonly Action<string> _onFatal;
    private readonly Action _onHalt;
    private bool _started;
    private bool _prepared;
    private bool _running;

    internal KvmAccelerator(string kvmPath, GuestRam ram, IoBus bus, int vcpuCount, ILogger logger, Action onHalt, Action<string> onFatal)
    {
        _bus = bus;
        _logger = logger;
        _onHalt = onHalt;
        _onFatal = onFatal;
        _kvm = KvmSystem.Open(kvmPath);
        try
        {
            _vm = _kvm.CreateVm();
            _vm.EnableManualDirtyLogProtect();
            _vm.MapRam(ram, logDirty: true);
            for (int i = 0; i < vcpuCount; i++)
            {
                KvmVcpu vcpu = _vm.CreateVcpu(i);
                _vcpus.Add(vcpu);
                _threads.Add(new VcpuThread(vcpu, this));
            }
        }
        catch
        {
            Dispose();
            throw;
        }

        StateSections = [.. _vcpus.Select(v => (ISaveVmSection)new VcpuSection(v)), new ClockSection(_vm)];
    }

    public string Description => $"KVM ({_kvm.Path}, API {_kvm.ApiVersion}), {_vcpus.Count} vCPU(s)";

    public bool IsRunning => Volatile.Read(ref _running);

    public IReadOnlyList<ISaveVmSection> StateSections { get; }

    /// <inheritdoc />
    public int[] VcpuThreadIds() => _threads.Select(t => t.KernelThreadId).ToArray();

    /// <summary>Every vCPU thread notes when it next leaves its park (<see cref="VcpuThread.WatchNextResume"/>).</summary>
    internal void WatchVcpuResumes()
    {
        foreach (VcpuThread thread in _threads)
        {
            thread.WatchNextResume();
        }
    }

    /// <summary>
    /// When each started vCPU thread left its park since <see cref="WatchVcpuResumes"/> (Stopwatch
    /// timestamps; 0: not yet). Threads never started (application processors: only vCPU 0 runs, see
    /// the class) are left out: they never leave a park.
    /// </summary>
    internal long[] VcpuResumedAt() => _threads.Where(t => t.State != VcpuRunState.Created).Select(t => t.NextResumedAt).ToArray();

    /// <summary>True once any vCPU thread has left its park since <see cref="WatchVcpuResumes"/>. Any thread; no allocation.</summary>
    internal bool AnyVcpuResumed()
    {
        foreach (VcpuThread thread in _threads)
        {
            if (thread.NextResumedAt != 0)
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>How many pauses moved each vCPU's thread to the pausing thread's CPU, by vCPU index (<see cref="VcpuThread.CpuLends"/>). Any thread.</summary>
    internal int[] VcpuCpuLends() => _threads.Select(t => t.CpuLends).ToArray();

    /// <summary>How many times each vCPU thread parked (for tests).</summary>
    internal int[] VcpuParks() => _threads.Select(t => t.Parks).ToArray();

    /// <summary>Sets vCPU 0 up for a Multiboot entry, as QEMU's -kernel does.</summary>
    /// <param name="boot">Where the loader put the entry point and the info block.</param>
    internal void SetBootState(MultibootBoot boot) =>
        _vcpus[0].SetMultibootEntry(checked((uint)boot.Entry.Value), checked((uint)boot.InfoAddress.Value));

    public void Start()
    {
        lock (_threads)
        {
            if (_started)
            {
                Resume();
                return;
            }

            _started = true;
            Volatile.Write(ref _running, true);
            if (_prepared)
            {
                _threads[0].Resume();
            }
            else
            {
                _threads[0].Start();
            }
        }
    }

    /// <inheritdoc />
    public void PrepareToStart()
    {
        lock (_threads)
        {
            if (_started || _prepared)
            {
                return;
            }

            _prepared = true;
            _threads[0].Start(paused: true);
        }
    }

    public void Pause(ParkWait wait = ParkWait.Spin)
    {
        Volatile.Write(ref _running, false);
        if (!_started)
        {
            return;
        }

        foreach (VcpuThread thread in _threads.Where(t => t.State is VcpuRunState.Running))
        {
            thread.Pause(wait);
        }
    }

    public void Resume()
    {
        if (!_started)
        {
            Start();
            return;
        }

        Volatile.Write(ref _running, true);
        foreach (VcpuThread thread in _threads.Where(t => t.State is VcpuRunState.Paused))
        {
            thread.Resume();
        }
    }

    public void Throttle(TimeSpan sleep)
    {
        if (!Volatile.Read(ref _running))
        {
            return;
        }

        foreach (VcpuThread thread in _threads)
        {
            thread.Throttle(sleep);
        }
    }

    public void Dispose()
    {
        foreach (VcpuThread thread in _threads)
        {
            thread.Stop();
        }

        foreach (KvmVcpu vcpu in _vcpus)
        {
            vcpu.Dispose();
        }

        _vm?.Dispose();
        _kvm.Dispose();
    }

    // IVcpuExitHandler: vCPU threads.
    void IVcpuExitHandler.PortIn(ushort port, Span<byte> data) => _bus.PortIn(port, data);

    void IVcpuExitHandler.PortOut(ushort port, ReadOnlySpan<byte> data) => _bus.PortOut(port, data);

    void IVcpuExitHandler.MmioRead(GuestPhysicalAddress address, Span<byte> data) => _bus.MmioRead(address, data);

    void IVcpuExitHandler.MmioWrite(GuestPhysicalAddress address, ReadOnlySpan<byte> data) => _bus.MmioWrite(address, data);

    void IVcpuExitHandler.OnHalt(int vcpu)
    {
        _logger.LogInformation("vCPU {Vcpu} halted", vcpu);
        _onHalt();
    }

    void IVcpuExitHandler.OnShutdown(int vcpu, string reason)
    {
        _logger.LogError("vCPU {Vcpu} stopped: {Reason}", vcpu, reason);
        Volatile.Write(ref _running, false);
        _onFatal($"vCPU {vcpu} stopped: {reason}");
    }

    /// <summary>The "cpu" section: one vCPU's complete state (VcpuState's own versioned format inside).</summary>
    private sealed class VcpuSection(KvmVcpu vcpu) : ISaveVmSection
    {
        public string IdString => "cpu";

        public uint InstanceId => (uint)vcpu.Id;

        public uint Version => 1;

        public uint MinimumVersion => 1;

        public void Save(SaveVmWriter writer)
        {
            VcpuState state = vcpu.CaptureState();
            byte[] bytes = new byte[state.SerializedSize];
            state.WriteTo(bytes);
            writer.WriteBuffer(bytes);
        }

        public void Load(SaveVmReader reader, uint version)
        {
            CheckVersion(reader, version, this);
            ReadOnlySpan<byte> bytes = reader.ReadBuffer(16 << 20, "vCPU state");
            reader.ExpectEnd();
            VcpuState state;
            try
            {
                state = VcpuState.ReadFrom(bytes);
            }
            catch (VcpuStateFormatException ex)
            {
                throw new DeviceStateException($"Section '{reader.SectionName}': {ex.Message}", ex);
            }

            if (state.VcpuId != vcpu.Id)
            {
                throw new DeviceStateException($"Section '{reader.SectionName}' holds the state of vCPU {state.VcpuId}, not of vCPU {vcpu.Id}.");
            }

            try
            {
                vcpu.RestoreState(state);
            }
            catch (KvmIoctlException ex)
            {
                throw new DeviceStateException($"Section '{reader.SectionName}': KVM refused the saved vCPU state: {ex.Message} Was it saved on a host with another CPU model?", ex);
            }
        }
    }

    /// <summary>The "kvmclock" section: the VM clock, so guest time does not jump backwards.</summary>
    private sealed class ClockSection(KvmVm vm) : ISaveVmSection
    {
        public string IdString => "kvmclock";

        public uint InstanceId => 0;

        public uint Version => 1;

        public uint MinimumVersion => 1;

        public void Save(SaveVmWriter writer) => writer.WriteBe64(vm.GetClock().Clock);

        public void Load(SaveVmReader reader, uint version)
        {
            CheckVersion(reader, version, this);
            ulong clock = reader.ReadBe64("clock");
            reader.ExpectEnd();
            try
            {
                vm.SetClock(new KvmClockData { Clock = clock });
            }
            catch (KvmIoctlException ex)
            {
                throw new DeviceStateException($"Section '{reader.SectionName}': KVM refused the saved clock 0x{clock:x}: {ex.Message}", ex);
            }
        }
    }

    /// <summary>Refuses a section version outside [MinimumVersion, Version], naming both.</summary>
    private static void CheckVersion(SaveVmReader reader, uint version, ISaveVmSection section)
    {
        if (version < section.MinimumVersion || version > section.Version)
        {
            throw new DeviceStateException(
                $"Section '{reader.SectionName}': version {version} is not supported; this build reads versions {section.MinimumVersion} to {section.Version}.");
        }
    }
}
