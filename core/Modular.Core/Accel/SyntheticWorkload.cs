using System.Diagnostics;
using Modular.Abstractions.Devices;
using Modular.Abstractions.Memory;
using Modular.Core.Vcpus;

namespace Modular.Core.Accel;

/// <summary>
/// The synthetic accelerator: no guest code at all. One workload thread touches guest RAM the way
/// the A/B guest does (increments the first byte of every page above 1 MiB, pass after pass), through
/// the guest-memory API, so the page invariant of the RAM checker holds and migration sees realistic
/// dirtying. It exists for hosts without KVM and for tests, and says so in <see cref="Description"/>.
/// </summary>
internal sealed class SyntheticWorkload : IAccelerator, ISaveVmSection
{
    internal const ulong StartAddress = 1UL << 20;

    private readonly IGuestMemory _memory;
    private readonly long _pagesPerSecond;
    private readonly object _gate = new();
    private readonly Thread _thread;
    private int _workloadThreadId;
    private ulong _nextPage;
    private ulong _passes;
    private bool _runRequested;
    private bool _parked = true;
    private bool _stopping;
    private long _throttledUntil;

    /// <summary>Creates the workload over <paramref name="memory"/>.</summary>
    /// <param name="memory">Guest RAM.</param>
    /// <param name="pagesPerSecond">Pages touched per second; 0 = unthrottled.</param>
    internal SyntheticWorkload(IGuestMemory memory, long pagesPerSecond)
    {
        _memory = memory;
        _pagesPerSecond = pagesPerSecond;
        _nextPage = StartAddress / (ulong)memory.PageSize;
        _thread = new Thread(Run) { IsBackground = true, Name = "synthetic workload" };
        _thread.Start();
    }

    public string Description => $"synthetic accelerator (no guest code; a workload thread dirties {(_pagesPerSecond == 0 ? "as many pages as it can" : _pagesPerSecond + " pages/s")})";

    public bool IsRunning
    {
        get
        {
            lock (_gate)
            {
                return _runRequested;
            }
        }
    }

    /// <summary>Completed passes over RAM.</summary>
    internal ulong Passes => Interlocked.Read(ref _passes);

    public IReadOnlyList<ISaveVmSection> StateSections => [this];

    /// <summary>The workload thread stands in for vCPU 0 (its faults are the guest's).</summary>
    public int[] VcpuThreadIds() => [Volatile.Read(ref _workloadThreadId)];

    string ISaveVmSection.IdString => "synthetic-workload";

    uint ISaveVmSection.InstanceId => 0;

    uint ISaveVmSection.Version => 1;

    uint ISaveVmSection.MinimumVersion => 1;

    public void Start() => Resume();

    /// <inheritdoc />
    public void PrepareToStart()
    {
        // No threads to start ahead: the synthetic workload's writer starts with Resume.
    }

    public void Resume()
    {
        lock (_gate)
        {
            _runRequested = true;
            Monitor.PulseAll(_gate);
        }
    }

    public void Throttle(TimeSpan sleep)
    {
        lock (_gate)
        {
            if (_runRequested && sleep > TimeSpan.Zero)
            {
                _throttledUntil = Stopwatch.GetTimestamp() + (long)(sleep.TotalSeconds * Stopwatch.Frequency);
            }
        }
    }

    public void Pause(ParkWait wait = ParkWait.Spin)
    {
        lock (_gate)
        {
            _runRequested = false;
            Monitor.PulseAll(_gate); // ends a throttle's sleep
            while (!_parked)
            {
                Monitor.Wait(_gate);
            }
        }
    }

    public void Dispose()
    {
        lock (_gate)
        {
            _stopping = true;
            _runRequested = false;
            Monitor.PulseAll(_gate);
        }

        _thread.Join();
    }

    void ISaveVmSection.Save(SaveVmWriter writer)
    {
        lock (_gate)
        {
            writer.WriteBe64(_nextPage);
            writer.WriteBe64(_passes);
        }
    }

    void ISaveVmSection.Load(SaveVmReader reader, uint version)
    {
        if (version != 1)
        {
            throw new DeviceStateException($"Section '{reader.SectionName}': version {version} is not supported; the synthetic workload reads version 1.");
        }

        ulong next = reader.ReadBe64("next page");
        ulong passes = reader.ReadBe64("passes");
        reader.ExpectEnd();
        ulong pages = _memory.Size / (ulong)_memory.PageSize;
        if (next >= pages || next < StartAddress / (ulong)_memory.PageSize)
        {
            throw new DeviceStateException($"Section '{reader.SectionName}': next page {next} is outside guest RAM ({pages} pages).");
        }

        lock (_gate)
        {
            _nextPage = next;
            _passes = passes;
        }
    }

    /// <summary>The workload thread: touches pages while running, parks while paused.</summary>
    private void Run()
    {
        Volatile.Write(ref _workloadThreadId, Interop.Libc.Gettid());
        ulong pageSize = (ulong)_memory.PageSize;
        ulong firstPage = StartAddress / pageSize;
        ulong lastPage = _memory.Size / pageSize;
        Span<byte> one = stackalloc byte[1];
        var clock = Stopwatch.StartNew();
        long touched = 0;
        while (true)
        {
            lock (_gate)
            {
                if (!_runRequested)
                {
                    _parked = true;
                    Monitor.PulseAll(_gate);
                    while (!_runRequested && !_stopping)
                    {
                        Monitor.Wait(_gate);
                    }

                    if (_stopping)
                    {
                        return;
                    }

                    _parked = false;
                    clock.Restart();
                    touched = 0;
                }

                // Throttled (auto-converge): sleep it off unless paused or stopped meanwhile.
                long left;
                bool slept = false;
                while (_runRequested && !_stopping && (left = _throttledUntil - Stopwatch.GetTimestamp()) > 0)
                {
                    _ = Monitor.Wait(_gate, TimeSpan.FromSeconds(left / (double)Stopwatch.Frequency));
                    slept = true;
                }

                _throttledUntil = 0;
                if (slept)
                {
                    // The rate holds while running: no catching up on the time slept.
                    clock.Restart();
                    touched = 0;
                }

                if (!_runRequested || _stopping)
                {
                    continue;
                }

                // A batch of pages per lock round keeps Pause prompt and the loop cheap.
                for (int i = 0; i < 256; i++)
                {
                    var address = new GuestPhysicalAddress(_nextPage * pageSize);
                    _memory.Read(address, one);
                    one[0]++;
                    _memory.Write(address, one);
                    if (++_nextPage == lastPage)
                    {
                        _nextPage = firstPage;
                        _passes++;
                    }
                }
            }

            touched += 256;
            if (_pagesPerSecond > 0)
            {
                double due = touched / (double)_pagesPerSecond;
                double ahead = due - clock.Elapsed.TotalSeconds;
                if (ahead > 0.001)
                {
                    Thread.Sleep(TimeSpan.FromSeconds(Math.Min(ahead, 0.05)));
                }
            }
        }
    }
}
