using System.Diagnostics;
using System.Text.Json.Nodes;
using Modular.Core.Memory;
using Modular.Core.Qmp;

namespace Modular.Core.Migration.Engine;

/// <summary>
/// QEMU's calc-dirty-rate and query-dirty-rate: how fast the guest dirties its RAM, in MB/s, measured
/// over a set time so that an operator can choose precopy, auto-converge or postcopy before
/// migrating. Two of QEMU's modes:
/// <list type="bullet">
/// <item><c>page-sampling</c> (QEMU's default): copies <c>sample-pages</c> random pages per GiB of
/// each RAM block of at least 128 MiB (QEMU's MIN_RAMBLOCK_SIZE; smaller blocks are not sampled), and
/// counts those that changed by the end. It reads guest RAM only, so it may run beside a migration.</item>
/// <item><c>dirty-bitmap</c>: takes the dirty log (KVM's and the VMM's writes) at the start and at
/// the end and counts every page written in between. A migration reads the same log, so this mode
/// and a migration refuse each other.</item>
/// </list>
/// <c>dirty-ring</c> is refused as QEMU refuses it without KVM's dirty ring, which Modular does not use.
/// </summary>
/// <remarks>Threads: the QMP loop starts and queries; the measurement runs on a thread of its own.</remarks>
public sealed class DirtyRateMeter
{
    /// <summary>QEMU's MIN_CALC_TIME_MS and MAX_CALC_TIME_MS.</summary>
    public const int MinCalcTimeMs = 50, MaxCalcTimeMs = 60_000;

    /// <summary>QEMU's MIN_SAMPLE_PAGE_COUNT, MAX_SAMPLE_PAGE_COUNT and DIRTYRATE_DEFAULT_SAMPLE_PAGES (per GiB).</summary>
    public const int MinSamplePages = 128, MaxSamplePages = 16384, DefaultSamplePages = 512;

    /// <summary>QEMU's MIN_RAMBLOCK_SIZE: page-sampling skips smaller blocks.</summary>
    public const ulong MinSampledBlock = 128UL << 20;

    private readonly GuestRam _ram;
    private readonly object _gate = new();
    private string _status = "unstarted";
    private string _mode = "page-sampling";
    private string _unit = "second";
    private long _calcTimeMs;
    private long _startTimeSeconds;
    private long _samplePages = DefaultSamplePages;
    private long? _dirtyRateMBps;

    /// <param name="ram">The machine's guest RAM.</param>
    public DirtyRateMeter(GuestRam ram)
    {
        _ram = ram;
    }

    /// <summary>True while a dirty-bitmap measurement reads the dirty log (a migration must not start then).</summary>
    public bool ReadsDirtyLog
    {
        get
        {
            lock (_gate)
            {
                return _status == "measuring" && _mode == "dirty-bitmap";
            }
        }
    }

    /// <summary>The measurement's end, for tests and callers that want to wait; completed when none runs.</summary>
    public Task Completion { get; private set; } = Task.CompletedTask;

    /// <summary>calc-dirty-rate: starts a measurement and returns at once (query-dirty-rate follows it).</summary>
    /// <param name="calcTime">calc-time, in <paramref name="unit"/>.</param>
    /// <param name="unit">calc-time-unit: second (default) or millisecond.</param>
    /// <param name="samplePages">sample-pages per GiB (page-sampling only), or null for 512.</param>
    /// <param name="mode">page-sampling (default), dirty-bitmap or dirty-ring.</param>
    /// <param name="migrationRunning">True when a migration runs on this machine (dirty-bitmap is refused then).</param>
    /// <exception cref="QmpException">QEMU's errors for each bad argument, or one measurement already running.</exception>
    public void Start(long calcTime, string? unit, long? samplePages, string? mode, bool migrationRunning)
    {
        unit ??= "second";
        mode ??= "page-sampling";
        if (unit is not ("second" or "millisecond"))
        {
            throw QmpException.Generic($"Parameter 'calc-time-unit' does not accept value '{unit}'");
        }

        if (mode is not ("page-sampling" or "dirty-bitmap" or "dirty-ring"))
        {
            throw QmpException.Generic($"Parameter 'mode' does not accept value '{mode}'");
        }

        lock (_gate)
        {
            if (_status == "measuring")
            {
                throw QmpException.Generic("the dirty rate is already being measured.");
            }

            long calcTimeMs = unit == "second" ? calcTime * 1000 : calcTime;
            if (calcTime is < 0 or > MaxCalcTimeMs || calcTimeMs is < MinCalcTimeMs or > MaxCalcTimeMs)
            {
                throw QmpException.Generic($"Calculation time is out of range [{MinCalcTimeMs}ms, {MaxCalcTimeMs}ms].");
            }

            if (samplePages is not null && mode != "page-sampling")
            {
                throw QmpException.Generic("sample-pages is used only in page-sampling mode");
            }

            if (samplePages is < MinSamplePages or > MaxSamplePages)
            {
                throw QmpException.Generic($"sample-pages is out of range[{MinSamplePages}, {MaxSamplePages}].");
            }

            if (mode == "dirty-ring")
            {
                throw QmpException.Generic("mode dirty-ring is not enabled, use other method instead.");
            }

            if (mode == "dirty-bitmap" && migrationRunning)
            {
                throw QmpException.Generic("mode dirty-bitmap cannot measure while a migration runs (both read the dirty log); use page-sampling, or measure before migrating.");
            }

            _status = "measuring";
            _mode = mode;
            _unit = unit;
            _calcTimeMs = calcTimeMs;
            _samplePages = samplePages ?? DefaultSamplePages;
            _dirtyRateMBps = null;
            _startTimeSeconds = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
            var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            Completion = done.Task;
            var thread = new Thread(() => Measure(done)) { IsBackground = true, Name = "dirty rate" };
            thread.Start();
        }
    }

    /// <summary>query-dirty-rate, in QEMU's shape: status, start-time, calc-time (in the unit asked for, else the one the measurement used), calc-time-unit, sample-pages, mode, and dirty-rate (MB/s) once measured.</summary>
    /// <param name="unit">calc-time-unit to report calc-time in, or null for the measurement's own.</param>
    public JsonObject Query(string? unit = null)
    {
        if (unit is not (null or "second" or "millisecond"))
        {
            throw QmpException.Generic($"Parameter 'calc-time-unit' does not accept value '{unit}'");
        }

        lock (_gate)
        {
            unit ??= _unit;
            var reply = new JsonObject
            {
                ["status"] = _status,
                ["start-time"] = _startTimeSeconds,
                ["calc-time"] = unit == "second" ? _calcTimeMs / 1000 : _calcTimeMs,
                ["calc-time-unit"] = unit,
                ["sample-pages"] = _mode == "page-sampling" ? _samplePages : 0,
                ["mode"] = _mode,
            };
            if (_dirtyRateMBps is { } rate)
            {
                reply["dirty-rate"] = rate;
            }

            return reply;
        }
    }

    private void Measure(TaskCompletionSource done)
    {
        string mode;
        long calcTimeMs, samplePages;
        lock (_gate)
        {
            mode = _mode;
            calcTimeMs = _calcTimeMs;
            samplePages = _samplePages;
        }

        long? rate = null;
        try
        {
            rate = mode == "dirty-bitmap" ? MeasureDirtyLog(calcTimeMs) : MeasureBySampling(calcTimeMs, samplePages);
        }
        catch (Exception ex) when (ex is ObjectDisposedException or InvalidOperationException or IOException or Kvm.KvmIoctlException)
        {
            // The machine went away (quit) while this thread slept: no rate, and no crash.
        }
        finally
        {
            lock (_gate)
            {
                _dirtyRateMBps = rate;
                _status = "measured";
            }

            done.SetResult();
        }
    }

    /// <summary>Pages written between two syncs of the dirty log, as MB/s (QEMU's do_calculate_dirtyrate: MiB over seconds).</summary>
    private long MeasureDirtyLog(long calcTimeMs)
    {
        DirtyBitmap[] bitmaps = _ram.Blocks.Select(b => new DirtyBitmap(b.PageCount)).ToArray();
        for (int i = 0; i < bitmaps.Length; i++)
        {
            _ = _ram.SyncDirtyBitmap(_ram.Blocks[i], bitmaps[i]); // what was written before the start
            bitmaps[i].ClearAll();
        }

        long started = Stopwatch.GetTimestamp();
        Thread.Sleep(TimeSpan.FromMilliseconds(calcTimeMs));
        long pages = 0;
        for (int i = 0; i < bitmaps.Length; i++)
        {
            pages += _ram.SyncDirtyBitmap(_ram.Blocks[i], bitmaps[i]);
        }

        double seconds = Stopwatch.GetElapsedTime(started).TotalSeconds;
        return (long)(pages * (double)RamBlock.TargetPageSize / (1 << 20) / seconds);
    }

    /// <summary>The share of sampled pages that changed, times the sampled blocks' size, over the time (QEMU's page-sampling).</summary>
    private long MeasureBySampling(long calcTimeMs, long samplesPerGiB)
    {
        var samples = new List<(RamBlock Block, ulong Offset, byte[] Before)>();
        foreach (RamBlock block in _ram.Blocks.Where(b => b.Size >= MinSampledBlock))
        {
            long count = Math.Max(1, (long)(samplesPerGiB * (block.Size / (double)(1UL << 30))));
            for (long i = 0; i < count; i++)
            {
                ulong offset = (ulong)Random.Shared.NextInt64(block.PageCount) * RamBlock.TargetPageSize;
                var before = new byte[RamBlock.TargetPageSize];
                block.CopyOut(offset, before);
                samples.Add((block, offset, before));
            }
        }

        long started = Stopwatch.GetTimestamp();
        Thread.Sleep(TimeSpan.FromMilliseconds(calcTimeMs));
        double seconds = Stopwatch.GetElapsedTime(started).TotalSeconds;
        if (samples.Count == 0)
        {
            return 0;
        }

        var after = new byte[RamBlock.TargetPageSize];
        long changed = 0;
        foreach ((RamBlock block, ulong offset, byte[] before) in samples)
        {
            block.CopyOut(offset, after);
            changed += before.AsSpan().SequenceEqual(after) ? 0 : 1;
        }

        double sampledMiB = _ram.Blocks.Where(b => b.Size >= MinSampledBlock).Sum(b => (double)b.Size) / (1 << 20);
        return (long)(changed / (double)samples.Count * sampledMiB / seconds);
    }
}
