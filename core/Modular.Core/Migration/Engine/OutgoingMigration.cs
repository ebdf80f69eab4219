using System.Buffers;
using System.Diagnostics;
using System.IO.Pipelines;
using Microsoft.Extensions.Logging;
using Modular.Abstractions.Devices;
using Modular.Abstractions.Transports;
using Modular.Core.Machine;
using Modular.Core.Memory;
using Modular.Core.Migration.State;
using Modular.Core.Migration.Stream;
using Modular.Core.Qmp;

namespace Modular.Core.Migration.Engine;

/// <summary>
/// One outgoing (source) migration, precopy as QEMU does it: header, setup sections, RAM iterated
/// from the dirty bitmap until what remains fits downtime-limit at the measured bandwidth, then stop
/// the vCPUs, send the rest, every device and vCPU section, EOF and the VM description.
/// </summary>
/// <remarks>
/// Threads: <see cref="RunAsync"/> is the migration task (it alone writes the forward path); the
/// return-path reader is a second task (it alone reads). <see cref="Cancel"/> and the QMP queries
/// come from the QMP loop.
/// </remarks>
public sealed partial class OutgoingMigration
{
    private static readonly TimeSpan IterationBudget = TimeSpan.FromMilliseconds(50);
    private static readonly TimeSpan WarmUpWait = TimeSpan.FromSeconds(3);

    private readonly VirtualMachine _machine;
    private readonly IMigrationTransport _transport;
    private readonly TransportEndpoint _endpoint;
    private readonly ILogger _logger;
    private readonly CancellationTokenSource _cancel = new();
    private readonly SemaphoreSlim _continue = new(0, 1);
    private TaskCompletionSource<uint> _shutReceived = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private IMigrationConnection? _connection;
    private const int CommitmentNone = 0;
    private const int CommitmentCancelled = 1;
    private const int CommitmentPostcopy = 2;

    private volatile string? _error;
    private int _pass;
    private int _commitment;

    /// <summary>Prepares a migration of <paramref name="machine"/> to <paramref name="endpoint"/>.</summary>
    /// <param name="machine">The source machine.</param>
    /// <param name="transport">The transport plugin for the endpoint's scheme.</param>
    /// <param name="endpoint">Where the destination listens.</param>
    /// <param name="settings">Capabilities and parameters, fixed for this migration.</param>
    /// <param name="logger">Logging.</param>
    public OutgoingMigration(VirtualMachine machine, IMigrationTransport transport, TransportEndpoint endpoint, MigrationSettingsSnapshot settings, ILogger logger)
    {
        _machine = machine;
        _transport = transport;
        _endpoint = endpoint;
        Settings = settings;
        _logger = logger;
    }

    /// <summary>The migration's status (QEMU's names); raises the MIGRATION event.</summary>
    public MigrationStatusMachine Status { get; } = new();

    /// <summary>Counters for query-migrate.</summary>
    public MigrationStats Stats { get; } = new();

    /// <summary>The capabilities and parameters in force.</summary>
    public MigrationSettingsSnapshot Settings { get; }

    /// <summary>TLS for every channel (the tls-creds parameter), or null for plain channels.</summary>
    public Tls.TlsSession? Tls { get; init; }

    /// <summary>Why the migration failed, once it has.</summary>
    public string? Error => _error;

    /// <summary>Completes when the migration has finished (completed, failed or cancelled).</summary>
    public Task Completion { get; private set; } = Task.CompletedTask;

    /// <summary>Raised for every MIGRATION_PASS (the pass number). Migration task.</summary>
    public event Action<int>? PassStarted;

    /// <summary>Starts the migration task. QMP loop.</summary>
    public void Start()
    {
        Status.MoveTo(MigrationStatus.Setup);
        Completion = Task.Run(RunAsync);
    }

    /// <summary>
    /// migrate_cancel: in setup or precopy, aborts the connection; the source keeps running with
    /// nothing lost. Harmless once finished. Refused once the postcopy package may have gone out
    /// (QEMU 9.1 refuses it too): cancelling then would lose the guest. A cancel and the postcopy
    /// switch race through one flag, so exactly one of them wins. QMP loop.
    /// </summary>
    /// <returns>False when postcopy is in progress and the migration was not cancelled.</returns>
    public bool Cancel()
    {
        if (Interlocked.CompareExchange(ref _commitment, CommitmentCancelled, CommitmentNone) == CommitmentPostcopy)
        {
            return Status.Current is MigrationStatus.Completed or MigrationStatus.Failed;
        }

        if (Status.TryMoveTo(MigrationStatus.Cancelling, out _))
        {
            _cancel.Cancel();
            _connection?.Abort(new OperationCanceledException("migrate_cancel"));
        }

        return true;
    }

    /// <summary>
    /// migrate-continue: lets a migration paused in <paramref name="state"/> (pre-switchover, with
    /// pause-before-switchover) go on. QMP loop.
    /// </summary>
    /// <returns>False (nothing done) when the migration is not in <paramref name="state"/>.</returns>
    public bool Continue(MigrationStatus state)
    {
        if (state != MigrationStatus.PreSwitchover || Status.Current != MigrationStatus.PreSwitchover)
        {
            return false;
        }

        _continue.Release();
        return true;
    }

    /// <summary>
    /// pause-before-switchover (QEMU's): with the vCPUs stopped and before anything of the switch is
    /// sent, enter pre-switchover and wait for migrate-continue (or migrate_cancel, which resumes
    /// the guest here), then enter <paramref name="next"/> (null: stay until the caller moves on, as
    /// postcopy does once its package is committed). The wait is part of the downtime, as in QEMU.
    /// Migration task.
    /// </summary>
    /// <remarks>Not async when the capability is off: the first run of an async method's state machine compiles generic code inside the downtime.</remarks>
    private ValueTask MaybePauseBeforeSwitchoverAsync(MigrationStatus? next) =>
        Settings.Has("pause-before-switchover") ? PauseBeforeSwitchoverAsync(next) : ValueTask.CompletedTask;

    private async ValueTask PauseBeforeSwitchoverAsync(MigrationStatus? next)
    {
        Status.MoveTo(MigrationStatus.PreSwitchover);
        _logger.LogInformation("Migration to {Endpoint} paused before the switchover (pause-before-switchover); migrate-continue state=pre-switchover goes on", _endpoint);
        await _continue.WaitAsync(_cancel.Token).ConfigureAwait(false);
        if (next is { } status)
        {
            Status.MoveTo(status);
        }
    }

    /// <summary>The migration task: everything a precopy migration writes, in order.</summary>
    private async Task RunAsync()
    {
        bool stoppedByUs = false;
        bool guestWasRunning = _machine.RunState == QmpRunState.Running;
        RamSaver? ramSaver = null;
        Multifd.MultifdSender? multifd = null;
        try
        {
            IReadOnlyList<ISaveVmSection> sections = _machine.StateSections();
            Task<TimeSpan> warmUp = SwitchWarmUp.StartAsync(sections, incoming: false);
            RamSaver ram = ramSaver = new RamSaver(_machine.Ram, Stats);
            IMigrationConnection connected = await _transport.ConnectAsync(_endpoint, _cancel.Token).ConfigureAwait(false);
            _connection = Tls is { } tls ? await tls.WrapAsync(connected, _cancel.Token).ConfigureAwait(false) : connected;
            _logger.LogDebug("Migration to {Endpoint}: connected at {Ms} ms", _endpoint, Stats.ElapsedMs);
            PipeWriter output = _connection.Transport.Output;
            var writer = new MigrationStreamWriter(output);
            bool returnPath = Settings.Has("return-path") || Settings.Has("postcopy-ram");
            Task returnPathReader = Task.CompletedTask;
            if (Settings.Has("multifd"))
            {
                IMigrationConnection connection = _connection;
                multifd = await Multifd.MultifdSender.OpenAsync(connection, Settings.MultifdChannels, ex => connection.Abort(ex), _cancel.Token).ConfigureAwait(false);
                ram.Multifd = multifd;
                _logger.LogInformation("Migration to {Endpoint}: {Channels} multifd channels open", _endpoint, Settings.MultifdChannels);
            }

            StreamHeader.Current.WriteTo(writer);
            new ConfigurationSection(MachineType).WriteTo(writer);
            if (returnPath)
            {
                new OpenReturnPathCommand().WriteTo(writer);
                // As QEMU's migration thread does ("a ping that will make stuff easier to debug"). It
                // also runs the return path's code on both sides once, before the first page request.
                new PingCommand(1).WriteTo(writer);
                returnPathReader = ReadReturnPathAsync(_connection);
            }

            if (PostcopyEnabled)
            {
                new PostcopyAdviseCommand(HostPageSizeSummary(), RamBlock.TargetPageSize).WriteTo(writer);
                if (_connection is IPageChannel pageChannel)
                {
                    WritePageChannelSection(writer, pageChannel, sectionId: (uint)sections.Count + 1);
                }

                if (Settings.Has("postcopy-preempt"))
                {
                    await OpenPreemptChannelAsync(writer, output, ram, sectionId: (uint)sections.Count + 2).ConfigureAwait(false);
                }
            }

            if (Settings.Has("xbzrle"))
            {
                if (multifd is not null || PostcopyEnabled)
                {
                    // As QEMU's multifd, which sends pages whole; and the destination places postcopy's pages whole.
                    _logger.LogInformation("Migration to {Endpoint}: xbzrle is not used with {Other}; pages go whole", _endpoint, multifd is not null ? "multifd" : "postcopy-ram");
                }
                else
                {
                    ram.Xbzrle = new XbzrleCache(Settings.XbzrleCacheSize);
                    Stats.SetXbzrleCacheSize(ram.Xbzrle.Size);
                }
            }

            const uint ramSectionId = 0;
            SectionHeader.Start(ramSectionId, RamSaver.SectionName, 0, RamSaver.SectionVersion).WriteTo(writer);
            ram.MarkAllDirty();
            ram.BlockList(PostcopyEnabled).WriteTo(writer);
            ram.SyncMultifd();
            writer.WriteRamEos();
            new SectionFooter(ramSectionId).WriteTo(writer);
            await FlushAsync(output).ConfigureAwait(false);
            Stats.SetSetupDone();
            _logger.LogDebug("Migration to {Endpoint}: setup done in {Ms} ms", _endpoint, Stats.ElapsedMs);
            // So that the stop and the device saves at the switch run warm code (scratch output).
            _machine.RehearseStop(
                () => WriteDeviceSections(new MigrationStreamWriter(new ArrayBufferWriter<byte>(64 * 1024)), sections, firstSectionId: 1, description: null),
                Settings.Has("postcopy-ram") ? Vcpus.ParkWait.LendCpu : Vcpus.ParkWait.Spin);
            Status.MoveTo(MigrationStatus.Active);

            var bandwidth = new BandwidthEstimator();
            // Bytes out so far: the main stream's, and the multifd channels' (headers and pages).
            long Sent() => writer.Position + (multifd?.BytesSent ?? 0);
            SetRateLimit(Settings.MaxBandwidth, Sent());
            long accounted = 0;
            async ValueTask AfterFlush(long _)
            {
                long position = Sent();
                Stats.AddMultifdBytes((multifd?.BytesSent ?? 0) - Stats.MultifdBytes);
                Stats.AddTransferred(position - accounted);
                bandwidth.Add((ulong)(position - accounted));
                accounted = position;
                await ThrottleAsync(position).ConfigureAwait(false);
            }

            PassStarted?.Invoke(++_pass);
            long passStart = Environment.TickCount64;
            bool postcopy = false;
            State.AutoConverge? autoConverge = Settings.Has("auto-converge") ? new State.AutoConverge(Settings.Throttle, passStart, Sent()) : null;
            while (true)
            {
                _cancel.Token.ThrowIfCancellationRequested();
                if (_postcopyRequested && PostcopyEnabled)
                {
                    postcopy = true;
                    break;
                }

                SectionHeader.Part(ramSectionId).WriteTo(writer);
                bool drained = await ram.SendDirtyAsync(writer, output, IterationBudget, AfterFlush, _cancel.Token).ConfigureAwait(false);
                ram.SyncMultifd();
                writer.WriteRamEos();
                new SectionFooter(ramSectionId).WriteTo(writer);
                await FlushAsync(output).ConfigureAwait(false);
                await AfterFlush(0).ConfigureAwait(false);
                bandwidth.TryCloseWindow(TimeSpan.FromMilliseconds(100));
                if (!drained)
                {
                    continue;
                }

                if (ram.Xbzrle is { Started: false } cache)
                {
                    cache.Started = true; // the first round is over: pages sent again may go as differences
                }

                long pending = ram.Sync() * 4096;
                if (autoConverge?.OnSync(pending, Environment.TickCount64, Sent(), _machine.CpuThrottle.Percentage) is { } throttlePercent)
                {
                    _machine.CpuThrottle.Set(throttlePercent);
                    _logger.LogInformation("Migration to {Endpoint}: auto-converge throttles the vCPUs to {Percent} % (pass {Pass}, {Pending} bytes dirty)", _endpoint, _machine.CpuThrottle.Percentage, _pass, pending);
                }

                double bytesPerSecond = bandwidth.BytesPerSecond;
                long passMs = Math.Max(1, Environment.TickCount64 - passStart);
                Stats.SetRates(bytesPerSecond, pending / 4096 * 1000.0 / passMs, (Stats.NormalPages + Stats.DuplicatePages) * 1000.0 / Math.Max(1, Stats.ElapsedMs), ConvergenceRule.ExpectedDowntimeMs((ulong)pending, bytesPerSecond));
                if (_postcopyRequested && PostcopyEnabled && pending != 0)
                {
                    postcopy = true;
                    break;
                }

                if (pending == 0 || ConvergenceRule.HasConverged((ulong)pending, bytesPerSecond, Settings.DowntimeLimitMs))
                {
                    break;
                }

                PassStarted?.Invoke(++_pass);
                passStart = Environment.TickCount64;
            }

            // The switch's code is compiled before the guest stops, not inside the downtime.
            long waitStart = Stopwatch.GetTimestamp();
            await Task.WhenAny(warmUp, Task.Delay(WarmUpWait, _cancel.Token)).ConfigureAwait(false);
            _logger.LogDebug("Migration to {Endpoint}: switch code compiled in {Compile:F0} ms ({Cpu:F0} ms of CPU); waited {Wait:F1} ms for it at {Ms} ms", _endpoint, warmUp.IsCompletedSuccessfully ? warmUp.Result.TotalMilliseconds : double.NaN, SwitchWarmUp.CpuTime.TotalMilliseconds, Stopwatch.GetElapsedTime(waitStart).TotalMilliseconds, Stats.ElapsedMs);
            if (postcopy)
            {
                stoppedByUs = true;
                await RunPostcopyAsync(writer, output, ram, sections, ramSectionId, AfterFlush, returnPathReader).ConfigureAwait(false);
                _logger.LogInformation("Postcopy migration to {Endpoint} completed in {Ms} ms, downtime {Downtime} ms, {Requests} page requests", _endpoint, Stats.TotalMs, Stats.DowntimeMs, Stats.PostcopyRequests);
                return;
            }

            // Switchover: stop the guest, send what is left and the device and vCPU state.
            long downtimeStart = Stopwatch.GetTimestamp();
            _machine.StopAs(QmpRunState.FinishMigrate);
            stoppedByUs = true;
            await MaybePauseBeforeSwitchoverAsync(MigrationStatus.Device).ConfigureAwait(false);
            long stopped = Stopwatch.GetTimestamp();
            long lastPages = ram.Sync(final: true);
            ram.FinalStage = true;
            long synced = Stopwatch.GetTimestamp();
            SectionHeader.End(ramSectionId).WriteTo(writer);
            await ram.SendDirtyAsync(writer, output, TimeSpan.MaxValue, AfterFlush, _cancel.Token).ConfigureAwait(false);
            ram.SyncMultifd();
            // The channels carry nothing after the last SYNC: they end now, so that their end travels
            // with the devices and EOF instead of after them (the destination checks it after EOF).
            multifd?.Complete();
            writer.WriteRamEos();
            new SectionFooter(ramSectionId).WriteTo(writer);
            long pagesWritten = Stopwatch.GetTimestamp();
            var description = new VmDescriptionBuilder();
            description.AddRam(ramSectionId);
            WriteDeviceSections(writer, sections, firstSectionId: ramSectionId + 1, description);
            writer.WriteEof();
            new VmDescription(description.ToJson()).WriteTo(writer);
            await FlushAsync(output).ConfigureAwait(false);
            await AfterFlush(0).ConfigureAwait(false);
            long flushed = Stopwatch.GetTimestamp();
            await WaitForDestinationAsync(_connection, returnPath, returnPathReader).ConfigureAwait(false);

            Stats.SetDowntime((long)Stopwatch.GetElapsedTime(downtimeStart).TotalMilliseconds);
            _logger.LogInformation(
                "Completion: vCPUs stopped in {Stop:F1} ms, last sync {Sync:F1} ms, {Pages} pages written in {Write:F1} ms, devices and EOF flushed in {Flush:F1} ms, destination done {Wait:F1} ms later",
                Stopwatch.GetElapsedTime(downtimeStart, stopped).TotalMilliseconds,
                Stopwatch.GetElapsedTime(stopped, synced).TotalMilliseconds,
                lastPages,
                Stopwatch.GetElapsedTime(synced, pagesWritten).TotalMilliseconds,
                Stopwatch.GetElapsedTime(pagesWritten, flushed).TotalMilliseconds,
                Stopwatch.GetElapsedTime(flushed).TotalMilliseconds);
            Stats.SetRemaining(0);
            Stats.SetFinished();
            _machine.SetRunState(QmpRunState.PostMigrate);
            Status.MoveTo(MigrationStatus.Completed);
            _logger.LogInformation("Migration to {Endpoint} completed in {Ms} ms, downtime {Downtime} ms", _endpoint, Stats.TotalMs, Stats.DowntimeMs);
        }
        catch (Exception ex)
        {
            Finish(ex, stoppedByUs, guestWasRunning);
        }
        finally
        {
            if (_connection is not null)
            {
                await TransportCleanup.DisposeAsync(_connection, _logger, _connection.RemoteDescription).ConfigureAwait(false);
            }

            // After the connection: nothing written by reference is waiting to be sent any more.
            multifd?.Dispose();
            ramSaver?.Dispose();

            // As QEMU's migrate_fd_cleanup: the guest runs at full speed again, wherever it runs.
            _machine.CpuThrottle.Stop();
        }
    }

    /// <summary>
    /// Adds query-migrate's cpu-throttle-percentage (the CPU throttle now, 0 when none) when the
    /// auto-converge capability is on, as QEMU does. QMP loop.
    /// </summary>
    internal void AddThrottleFigures(System.Text.Json.Nodes.JsonObject reply)
    {
        if (Settings.Has("auto-converge"))
        {
            reply["cpu-throttle-percentage"] = _machine.CpuThrottle.Percentage;
        }
    }

    /// <summary>The machine type written in the CONFIGURATION section; the destination must match it.</summary>
    internal const string MachineType = "modular-pc-multiboot";

    private void Finish(Exception ex, bool stoppedByUs, bool guestWasRunning)
    {
        Stats.SetFinished();
        bool cancelled = Status.Current == MigrationStatus.Cancelling;
        _error = cancelled ? null : Describe(ex);
        if (_inPostcopy)
        {
            // The seed's warning: the destination may already run the guest with part of its RAM.
            // Resuming here could run two copies; the source keeps the stopped guest.
            Status.TryMoveTo(MigrationStatus.Failed, out _);
            _logger.LogError("{Error}", _error);
            return;
        }

        if (stoppedByUs && guestWasRunning)
        {
            // Precopy failed or was cancelled after the stop: the source still owns the guest.
            _machine.Resume();
        }

        if (cancelled)
        {
            Status.TryMoveTo(MigrationStatus.Cancelled, out _);
            _logger.LogInformation("Migration to {Endpoint} cancelled; the guest keeps running here.", _endpoint);
        }
        else
        {
            Status.TryMoveTo(MigrationStatus.Failed, out _);
            _logger.LogError("{Error}", _error);
        }
    }

    private string Describe(Exception ex)
    {
        ex = Migration.Tls.TlsSession.Unwrap(ex);
        string cause = ex switch
        {
            TransportException te => te.Message,
            MigrationStreamException me => me.Message,
            InvalidOperationException ioe => ioe.Message,
            _ => ex.Message,
        };
        // A cause that already ends a sentence (a question such as "Is the destination listening
        // there?") keeps its mark; anything else gets a full stop.
        cause = cause.TrimEnd('.', ' ');
        string end = cause.EndsWith('?') || cause.EndsWith('!') ? " " : ". ";
        return _inPostcopy
            ? $"Postcopy migration to {_endpoint} failed: {cause}{end}The guest cannot be resumed safely on this host (the destination may have run it with part of its RAM); it stays stopped here."
            : $"Migration to {_endpoint} failed: {cause}{end}The guest keeps running on this host.";
    }

    /// <summary>Flushes the stream's pipe; a peer that closed the connection is an <see cref="IOException"/>.</summary>
    /// <param name="output">The stream's pipe.</param>
    /// <param name="beforeWaiting">Runs when the flush cannot complete at once, before the wait (whose continuation may run on another thread).</param>
    private async ValueTask FlushAsync(PipeWriter output, Action? beforeWaiting = null)
    {
        ValueTask<FlushResult> flush = output.FlushAsync(_cancel.Token);
        if (!flush.IsCompleted)
        {
            beforeWaiting?.Invoke();
        }

        FlushResult result = await flush.ConfigureAwait(false);
        if (result.IsCanceled || result.IsCompleted)
        {
            throw new IOException("the destination closed the connection");
        }
    }

    /// <summary>
    /// Starts pacing at <paramref name="bytesPerSecond"/> (0: none) from <paramref name="position"/>
    /// bytes sent, now: max-bandwidth from the start, max-postcopy-bandwidth from the switch to
    /// postcopy (QEMU's migration_rate_set at postcopy_start). Migration task.
    /// </summary>
    private void SetRateLimit(ulong bytesPerSecond, long position)
    {
        _rateLimit = bytesPerSecond;
        _rateBase = position;
        _rateClock.Restart();
    }

    /// <summary>True while <paramref name="position"/> bytes sent are ahead of the rate limit (by more than a millisecond). Migration task.</summary>
    private bool AheadOfRateLimit(long position) => SecondsAheadOfRateLimit(position) > 0.001;

    // How long the bytes sent are ahead of the rate limit; zero without one.
    private double SecondsAheadOfRateLimit(long position)
    {
        ulong max = _rateLimit;
        return max == 0 ? 0 : (position - _rateBase) / (double)max - _rateClock.Elapsed.TotalSeconds;
    }

    /// <summary>
    /// Waits while <paramref name="position"/> bytes sent are ahead of the rate limit. In postcopy
    /// without a preempt channel a page request ends the wait, so that requested pages are never
    /// held back (QEMU's migration thread is woken for an urgent request the same way). Migration task.
    /// </summary>
    private async ValueTask ThrottleAsync(long position)
    {
        double ahead = SecondsAheadOfRateLimit(position);
        if (ahead <= 0.001)
        {
            return;
        }

        if (!_inPostcopy || _preempt is not null)
        {
            await Task.Delay(TimeSpan.FromSeconds(ahead), _cancel.Token).ConfigureAwait(false);
            return;
        }

        while (_requestArrived.CurrentCount > 0)
        {
            _requestArrived.Wait(0);
        }

        if (_requests.IsEmpty)
        {
            _ = await _requestArrived.WaitAsync(TimeSpan.FromSeconds(ahead), _cancel.Token).ConfigureAwait(false);
        }
    }
}
