using System.Buffers;
using System.IO.Pipelines;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using Modular.Abstractions.Faults;
using Modular.Abstractions.Plugins;
using Modular.Abstractions.Transports;
using Modular.Core.Memory;
using Modular.Core.Migration.Postcopy;
using Modular.Core.Migration.State;
using Modular.Core.Migration.Stream;
using Modular.Core.Plugins;
using Modular.Core.Qmp;

namespace Modular.Core.Migration.Engine;

/// <summary>
/// The destination's postcopy (the seed's "Destination behaviour"): ADVISE checks the fault backend
/// and prepares RAM; DISCARD drops pages; PACKAGED is read whole and parsed by the main task; its
/// LISTEN arms RAM and starts the fault thread and the listen thread, which takes over the stream;
/// its RUN starts the vCPUs; the listen thread ends the migration at EOF.
/// </summary>
/// <remarks>
/// <code>
/// main task:    ADVISE  DISCARD  PACKAGED( LISTEN  device  device  RUN )  -> returns
///                                            |        |fault
/// fault thread:                              +---- REQ_PAGES ---> source
/// listen thread:                             +-- page  page  page ... EOF -> SHUT(0), completed
/// </code>
/// </remarks>
public sealed partial class IncomingMigration
{
    private readonly Func<IFaultBackendFactory>? _faultBackend;
    private readonly TaskCompletionSource _runReached = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private PostcopyRam? _postcopyRam;
    private Task<PostcopyRam>? _postcopyPrepared;
    private PostcopyFaultThread? _faultThread;
    private PackageThread? _packageThread;
    private Task? _listenTask;
    private readonly ListenThreadPriority _listenPriority;

    // From POSTCOPY_ADVISE until postcopy ends: no garbage collection stops the fault thread or the preempt reader.
    private GcQuietRegion? _gcQuiet;
    private int _postcopyAborted;

    /// <summary>The destination's postcopy state (ADVISE, LISTEN, RUNNING, END).</summary>
    public PostcopyStateMachine PostcopyState { get; } = new();

    /// <summary>Postcopy commands on the main incoming task (package contents included).</summary>
    private async ValueTask HandlePostcopyCommandAsync(StreamCommand command, IMigrationConnection connection, MigrationStreamReader reader, long at)
    {
        switch (command)
        {
            case PostcopyAdviseCommand advise:
                long adviseStart = System.Diagnostics.Stopwatch.GetTimestamp();
                Advise(advise, reader, at);
                _gcQuiet ??= GcQuietRegion.Enter(_logger, "postcopy destination");
                _packageThread ??= new PackageThread("postcopy package");
                if (_returnPath is { } returnPath)
                {
                    _ = StartFaultThread(connection, returnPath);
                }

                _logger.LogDebug("POSTCOPY_ADVISE: fault backend open and RAM prepared in {Ms:F1} ms", System.Diagnostics.Stopwatch.GetElapsedTime(adviseStart).TotalMilliseconds);
                break;
            case PostcopyRamDiscardCommand discard:
                Discard(discard, reader, at);
                break;
            case PackagedCommand packaged:
                await LoadPackageAsync(packaged, connection, reader, at).ConfigureAwait(false);
                break;
            default:
                throw reader.ErrorAt(at, $"{StreamCommand.RecordName(command.Kind)} is not expected here (postcopy state {State.PostcopyStateMachine.Name(PostcopyState.Current)})");
        }
    }

    /// <summary>
    /// Probes and opens the fault backend and builds postcopy's page maps over this machine's RAM
    /// (nothing touches RAM yet). Main incoming task at ADVISE, or a pool thread while waiting.
    /// </summary>
    /// <exception cref="FaultBackendUnusableException">The backend's probe says it cannot be used here.</exception>
    private PostcopyRam OpenPostcopyRam()
    {
        IFaultBackendFactory factory = _faultBackend!();
        PluginAvailability availability = factory.Probe();
        if (!availability.IsUsable)
        {
            throw new FaultBackendUnusableException(availability.Reason ?? "its probe gave no reason");
        }

        return new PostcopyRam(_machine.Ram, factory.Open(), _machine.VcpuThreadIds);
    }

    /// <summary>
    /// postcopy-ram is known while waiting for the source: open the fault backend and build the page
    /// maps now (ADVISE takes them), unless there is no fault backend. Listening or QMP loop.
    /// </summary>
    private void PreparePostcopyWhileWaiting()
    {
        if (_faultBackend is null || _postcopyPrepared is not null)
        {
            return;
        }

        _postcopyPrepared = Task.Run(OpenPostcopyRam);
    }

    /// <summary>Disposes postcopy RAM prepared while waiting that no ADVISE took (a precopy migration, or a failure before it).</summary>
    private void DisposeUnusedPostcopyPreparation()
    {
        if (Interlocked.Exchange(ref _postcopyPrepared, null) is { } prepared)
        {
            _ = prepared.ContinueWith(t => t.Result.Dispose(), CancellationToken.None, TaskContinuationOptions.OnlyOnRanToCompletion, TaskScheduler.Default);
        }
    }

    /// <summary>A fault backend's probe said no; the message is its reason.</summary>
    private sealed class FaultBackendUnusableException(string reason) : Exception(reason);

    /// <summary>POSTCOPY_ADVISE: check that postcopy can work here and prepare RAM. Main incoming task.</summary>
    private void Advise(PostcopyAdviseCommand advise, MigrationStreamReader reader, long at)
    {
        if (!_settings.Snapshot().Has("postcopy-ram"))
        {
            throw reader.ErrorAt(at, "the source advised postcopy, but postcopy-ram is not enabled on this destination; enable it with migrate-set-capabilities on both sides before migrating");
        }

        if (advise.TargetPageSize != RamBlock.TargetPageSize)
        {
            throw reader.ErrorAt(at, $"the source's target page size is {advise.TargetPageSize}; this destination uses {RamBlock.TargetPageSize}");
        }

        ulong summary = _machine.Ram.Blocks.Aggregate(0UL, (sum, b) => sum | b.HostPageSize);
        if (advise.HostPageSizeSummary != summary)
        {
            throw reader.ErrorAt(at, $"the source's RAM uses host page sizes 0x{advise.HostPageSizeSummary:x}, this destination's 0x{summary:x}; back guest RAM the same way on both sides");
        }

        if (_faultBackend is null)
        {
            throw reader.ErrorAt(at, "postcopy needs a fault backend, and this destination was given none");
        }

        PostcopyRam ram;
        try
        {
            // Prepared while waiting for the source when postcopy-ram was known by then (probing the
            // backend and building the page maps took 25-40 ms of the migration's setup here).
            Task<PostcopyRam>? prepared = Interlocked.Exchange(ref _postcopyPrepared, null);
            ram = prepared is null ? OpenPostcopyRam() : prepared.GetAwaiter().GetResult();
        }
        catch (FaultBackendUnusableException ex)
        {
            throw reader.ErrorAt(at, $"postcopy needs the fault backend '{_settings.FaultBackend}', which cannot be used on this host: {ex.Message}");
        }
        catch (Exception ex) when (ex is PluginException or FaultBackendException)
        {
            throw reader.ErrorAt(at, $"postcopy needs the fault backend '{_settings.FaultBackend}': {ex.Message.TrimEnd('.')}");
        }

        // Postcopy relies on missing pages faulting: empty the guest's mapping (postcopy-ram may have
        // been enabled after listening started), as QEMU discards at ADVISE. Shared memory mapped with
        // minor faults keeps its populated memory (still being populated through the other mapping);
        // anything else is dropped, so populating stops first.
        _guestPopulateStop.Cancel();
        _guestPopulate.Wait();
        _guestDrop.Wait();
        if (!ram.MapsEveryBlockShared)
        {
            // Dropped memory must stay dropped: a page populated behind a copy's back would refuse it.
            _memoryPopulateStop.Cancel();
            _memoryPopulate.Wait();
        }

        ram.PrepareAtAdvise();
        if (_machine.Ram.Blocks.Any(b => b.IsShared && !ram.MapsShared(b)))
        {
            _logger.LogInformation("Postcopy places copies of pages into shared guest RAM: {Reason}", ram.SharedRamUnavailableReason);
        }

        _postcopyRam = ram;
        _ramLoader!.Postcopy = _postcopyRam;
        PostcopyState.MoveTo(State.PostcopyState.Advise);
    }

    /// <summary>POSTCOPY_RAM_DISCARD: drop pages sent earlier and dirtied since. Main incoming task, before LISTEN.</summary>
    private void Discard(PostcopyRamDiscardCommand discard, MigrationStreamReader reader, long at)
    {
        if (_postcopyRam is null || PostcopyState.Current != State.PostcopyState.Advise)
        {
            throw reader.ErrorAt(at, $"discard for RAM block '{discard.BlockId}' outside postcopy's ADVISE state (state {State.PostcopyStateMachine.Name(PostcopyState.Current)})");
        }

        RamBlock? block = _machine.Ram.Blocks.FirstOrDefault(b => b.Name == discard.BlockId)
            ?? throw reader.ErrorAt(at, $"discard for RAM block '{discard.BlockId}', which this machine does not have");
        foreach ((ulong start, ulong length) in discard.Ranges)
        {
            if (start % block.HostPageSize != 0 || length % block.HostPageSize != 0 || start + length > block.Size || start + length < start)
            {
                throw reader.ErrorAt(at, $"discard range 0x{start:x} +0x{length:x} of RAM block '{block.Name}' is not host-page aligned inside the block (0x{block.Size:x} bytes)");
            }

            _postcopyRam.Discard(block, start, length);
        }
    }

    /// <summary>
    /// PACKAGED: read the whole blob (freeing the stream for the listen thread), then parse it as a
    /// nested stream: LISTEN, device and vCPU sections, RUN. Main incoming task.
    /// </summary>
    // When the package was read in full and when POSTCOPY_RUN started the vCPUs (Stopwatch
    // timestamps, published together by the package thread for query-migrate); null before RUN.
    private PackageTimes? _packageTimes;

    private sealed record PackageTimes(long ReadAt, long RunAt);

    private async ValueTask LoadPackageAsync(PackagedCommand packaged, IMigrationConnection connection, MigrationStreamReader outer, long at)
    {
        if (_postcopyRam is null)
        {
            throw outer.ErrorAt(at, "PACKAGED without POSTCOPY_ADVISE first");
        }

        (byte[] blob, long offset) = await packaged.ReadPackageAsync(outer).ConfigureAwait(false);
        long read = System.Diagnostics.Stopwatch.GetTimestamp();

        // A device load in the package may fault on a missing page and block this thread until the
        // listen thread places it. This continuation may be running on the transport's own receive
        // thread (a transport may continue reads inline, as tcp and unix do): blocking that thread
        // would stop the very stream the page arrives on. Go on on the package thread, parked since ADVISE.
        Func<Task> load = () => LoadPackageContentsAsync(blob, offset, read, connection, outer, at);
        await (_packageThread?.RunAsync(load) ?? Task.Run(load)).ConfigureAwait(false);
    }

    /// <summary>The package's records, read from <paramref name="blob"/> (read in full at <paramref name="read"/>). The package thread.</summary>
    private async Task LoadPackageContentsAsync(byte[] blob, long offset, long read, IMigrationConnection connection, MigrationStreamReader outer, long at)
    {
        long listened = 0, loaded = 0;
        var inner = new MigrationStreamReader(PipeReader.Create(new ReadOnlySequence<byte>(blob)), outer.Limits, offset, _cancel.Token);
        while (!await inner.IsAtEndAsync().ConfigureAwait(false))
        {
            long innerAt = inner.Position;
            SectionType type = await inner.ReadSectionTypeAsync().ConfigureAwait(false);
            switch (type)
            {
                case SectionType.Command:
                    StreamCommand command = await StreamCommand.ReadFromAsync(inner).ConfigureAwait(false);
                    switch (command)
                    {
                        case PostcopyListenCommand:
                            Listen(connection, outer);
                            listened = System.Diagnostics.Stopwatch.GetTimestamp();
                            break;
                        case PostcopyRunCommand:
                            loaded = System.Diagnostics.Stopwatch.GetTimestamp();
                            // The guest runs nowhere from the source's stop until the vCPUs start here:
                            // how much of that is this side's (parked vCPU threads wake in about 0.1 ms).
                            Volatile.Write(ref _packageTimes, new PackageTimes(read, loaded));
                            _logger.LogDebug(
                                "POSTCOPY_RUN {Ms:F1} ms after the package was read (LISTEN done at {Listen:F1} ms); the vCPUs start now",
                                System.Diagnostics.Stopwatch.GetElapsedTime(read, loaded).TotalMilliseconds,
                                System.Diagnostics.Stopwatch.GetElapsedTime(read, listened).TotalMilliseconds);
                            Run(inner, innerAt);
                            break;
                        default:
                            throw inner.ErrorAt(innerAt, $"{StreamCommand.RecordName(command.Kind)} inside a package; a package holds LISTEN, device sections and RUN");
                    }

                    break;
                case SectionType.Full:
                    if (PostcopyState.Current != State.PostcopyState.Listening)
                    {
                        throw inner.ErrorAt(innerAt, "device section in a package before POSTCOPY_LISTEN");
                    }

                    SectionHeader header = await SectionHeader.ReadFromAsync(inner, type).ConfigureAwait(false);
                    SectionTarget target = Resolve(header, _devices, _ramLoader!, inner, innerAt);
                    if (target.Ram is not null)
                    {
                        throw inner.ErrorAt(innerAt, "the RAM section inside a package; RAM belongs to the listen thread");
                    }

                    await LoadSectionBodyAsync(target, header, inner, innerAt).ConfigureAwait(false);
                    break;
                default:
                    throw inner.ErrorAt(innerAt, $"unexpected {type} record inside a package");
            }
        }

        if (_listenTask is null || PostcopyState.Current != State.PostcopyState.Running)
        {
            throw outer.ErrorAt(at, "the package ended without POSTCOPY_LISTEN and POSTCOPY_RUN");
        }
    }

    /// <summary>POSTCOPY_LISTEN: arm RAM, start the fault thread and the listen thread. Main incoming task.</summary>
    private void Listen(IMigrationConnection connection, MigrationStreamReader outer)
    {
        if (_returnPath is null)
        {
            throw outer.Error("POSTCOPY_LISTEN without OPEN_RETURN_PATH: page requests would have no way back");
        }

        PostcopyState.MoveTo(State.PostcopyState.Listening);
        // A loop, not LINQ: Where/ToDictionary over these pairs compiled about 15 methods here, in the
        // package load, where the guest runs nowhere until RUN.
        var ramSections = new Dictionary<uint, SectionTarget>();
        foreach (KeyValuePair<uint, SectionTarget> pair in _sectionsById)
        {
            if (pair.Value.Ram is not null)
            {
                ramSections[pair.Key] = pair.Value;
            }
        }

        PostcopyFaultThread faults = _faultThread ?? StartFaultThread(connection, _returnPath);
        PrepareRecovery();
        faults.PageChannel = _pageChannel is { AttachedBlocks: > 0 } ? _pageChannel : null;
        _postcopyRam!.Arm();

        // The listen thread's reads complete on the thread pool; the main task may block a pool
        // thread inside a device load that faults, so make sure the pool does not starve meanwhile.
        ThreadPool.GetMinThreads(out int workers, out int io);
        ThreadPool.SetMinThreads(Math.Max(workers, 8), io);
        StartPreemptReader(connection);
        _ramLoader!.AfterBatch = RaiseListenThread;
        _listenTask = Task.Run(() => ListenAsync(outer, ramSections));
        Status.MoveTo(MigrationStatus.PostcopyActive);
    }

    /// <summary>Creates and starts the fault thread (ADVISE, or LISTEN if ADVISE could not). Main incoming task.</summary>
    private PostcopyFaultThread StartFaultThread(IMigrationConnection connection, ReturnPathWriter returnPath)
    {
        var faults = new PostcopyFaultThread(_postcopyRam!, returnPath, ex =>
        {
            _logger.LogError("Postcopy fault thread failed: {Error}", ex.Message);
            connection.Abort(new IOException("the postcopy fault thread failed: " + ex.Message, ex));
        });
        _faultThread = faults;
        faults.Start();
        return faults;
    }

    /// <summary>POSTCOPY_RUN: start the vCPUs (their faults are served from now on). Main incoming task.</summary>
    private void Run(MigrationStreamReader inner, long at)
    {
        if (PostcopyState.Current != State.PostcopyState.Listening)
        {
            throw inner.ErrorAt(at, $"POSTCOPY_RUN in postcopy state {State.PostcopyStateMachine.Name(PostcopyState.Current)}");
        }

        if (Volatile.Read(ref _postcopyAborted) != 0)
        {
            throw inner.ErrorAt(at, "POSTCOPY_RUN after the listen thread failed; the guest is not started");
        }

        _machine.WatchVcpuResumes(); // before Running: the listen thread's priority waits for a resume after it
        PostcopyState.MoveTo(State.PostcopyState.Running);
        _machine.CompleteIncoming();
        _runReached.TrySetResult();
    }

    /// <summary>
    /// Gives the listen loop's thread its postcopy priority, once that is the transport's thread (the
    /// loop starts on the pool; its reads end on the transport's thread). After each batch of pages
    /// and each section part; cheap when nothing changes. Listen thread.
    /// </summary>
    private void RaiseListenThread()
    {
        if (_listenPriority.OnCurrentThread())
        {
            _logger.LogDebug("The postcopy listen thread ({Thread}) runs at nice {Nice} until postcopy ends", Thread.CurrentThread.Name, _listenPriority.Nice);
        }
    }

    /// <summary>
    /// The listen thread: reads the rest of the stream (RAM PART/END sections, placed atomically
    /// through the fault backend), then EOF: every page must be here; disarm, SHUT(0).
    /// Listen thread (an async loop whose reads complete on the thread pool; it never touches RAM).
    /// </summary>
    private async Task ListenAsync(MigrationStreamReader reader, Dictionary<uint, SectionTarget> ramSections)
    {
        try
        {
            while (true)
            {
                try
                {
                    await ListenOnAsync(reader, ramSections).ConfigureAwait(false);
                    return;
                }
                catch (Exception ex) when (CanRecover(ex))
                {
                    reader = await PauseUntilRecoveredAsync(ex).ConfigureAwait(false);
                }
            }
        }
        catch (Exception)
        {
            // Wake everything that waits for a page (vCPUs, the main task inside a device load) and
            // stop the guest before the error travels to the incoming task.
            AbortPostcopy();
            throw;
        }
    }

    /// <summary>The listen thread's reading of one connection's stream, up to EOF (see <see cref="ListenAsync"/>).</summary>
    private async Task ListenOnAsync(MigrationStreamReader reader, Dictionary<uint, SectionTarget> ramSections)
    {
        while (true)
        {
            long at = reader.Position;
            SectionType type = await reader.ReadSectionTypeAsync().ConfigureAwait(false);
            switch (type)
            {
                case SectionType.Part or SectionType.End:
                    SectionHeader header = await SectionHeader.ReadFromAsync(reader, type).ConfigureAwait(false);
                    if (!ramSections.TryGetValue(header.SectionId, out SectionTarget? target))
                    {
                        throw reader.ErrorAt(at, $"section id {header.SectionId} after POSTCOPY_LISTEN; only RAM sections may follow the package");
                    }

                    await LoadSectionBodyAsync(target, header, reader, at).ConfigureAwait(false);
                    RaiseListenThread();
                    break;
                case SectionType.Command:
                    StreamCommand command = await StreamCommand.ReadFromAsync(reader).ConfigureAwait(false);
                    switch (command)
                    {
                        case PingCommand ping:
                            await _returnPath!.SendAsync(ReturnPathMessage.Pong(ping.Value)).ConfigureAwait(false);
                            break;
                        case RecvBitmapCommand or PostcopyResumeCommand:
                            await HandleRecoveryCommandAsync(command, reader, at).ConfigureAwait(false);
                            break;
                        default:
                            throw reader.ErrorAt(at, $"{StreamCommand.RecordName(command.Kind)} after POSTCOPY_LISTEN");
                    }

                    break;
                case SectionType.Full when _preemptReopenAllowed:
                    // After a recovery: the source opens its preempt channel again (see LoadPreemptSectionAsync).
                    SectionHeader preempt = await SectionHeader.ReadFromAsync(reader, type).ConfigureAwait(false);
                    if (preempt.IdString != PreemptChannelSection.Name)
                    {
                        throw reader.ErrorAt(at, $"section '{preempt.IdString}' after POSTCOPY_LISTEN; only RAM sections and, after a recovery, '{PreemptChannelSection.Name}' may follow the package");
                    }

                    await LoadPreemptSectionAsync(preempt, _connection!, reader, at).ConfigureAwait(false);
                    StartPreemptReader(_connection!);
                    break;
                case SectionType.Eof:
                    if (!await reader.IsAtEndAsync().ConfigureAwait(false) && await reader.PeekU8Async("VMDESCRIPTION") == (int)SectionType.VmDescription)
                    {
                        await reader.ReadSectionTypeAsync().ConfigureAwait(false);
                        await VmDescription.ReadFromAsync(reader).ConfigureAwait(false);
                    }

                    await FinishPostcopyAsync(reader, at).ConfigureAwait(false);
                    return;
                default:
                    throw reader.ErrorAt(at, $"unexpected {type} record after POSTCOPY_LISTEN");
            }
        }
    }

    private async Task FinishPostcopyAsync(MigrationStreamReader reader, long at)
    {
        ulong missing = _postcopyRam!.PagesNotReceived;
        if (missing != 0)
        {
            throw reader.ErrorAt(at, $"EOF while {missing} pages of guest RAM never arrived");
        }

        // The main task must be past RUN before postcopy can END.
        await _runReached.Task.ConfigureAwait(false);
        _listenPriority.Restore();
        _faultThread!.Stop();
        await StopPreemptReaderAsync().ConfigureAwait(false);
        _postcopyRam.DisarmAll();
        _gcQuiet?.Dispose();
        await _returnPath!.SendAsync(ReturnPathMessage.Shut(0)).ConfigureAwait(false);
        await WaitForSourceToCloseAsync(reader).ConfigureAwait(false);
    }

    /// <summary>
    /// After SHUT: wait (a few seconds at most) until the source closes the forward path. Disposing
    /// our connection at once can drop the SHUT still queued in the transport, and the source would
    /// then fail a migration that worked. Main incoming task (precopy) or listen thread (postcopy).
    /// </summary>
    private static async Task WaitForSourceToCloseAsync(MigrationStreamReader reader)
    {
        try
        {
            while (!await reader.IsAtEndAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(5)).ConfigureAwait(false))
            {
                await reader.ReadBytesAsync(1, "trailing byte").ConfigureAwait(false);
            }
        }
        catch (Exception ex) when (ex is TimeoutException or IOException or MigrationStreamException or OperationCanceledException or TransportException)
        {
            // The source did not close in time or closed abruptly: SHUT has had its chance.
        }
    }

    /// <summary>
    /// Postcopy failed: stop asking, disarm (waking every waiter; a page that never came then reads
    /// as zero, which is why the guest is stopped right after and never resumed here), stop the
    /// vCPUs. Idempotent; listen thread or incoming task.
    /// </summary>
    private void AbortPostcopy()
    {
        _listenPriority.Restore();
        _gcQuiet?.Dispose();
        if (_postcopyRam is null || Interlocked.Exchange(ref _postcopyAborted, 1) != 0)
        {
            return;
        }

        _runReached.TrySetException(new IOException("postcopy failed before POSTCOPY_RUN"));
        _faultThread?.Stop();
        _postcopyRam.DisarmAll();
        if (PostcopyState.Current >= State.PostcopyState.Listening)
        {
            _machine.StopAs(QmpRunState.Paused);
        }
    }

    /// <summary>
    /// Adds the destination's postcopy figures to a query-migrate reply: QEMU's postcopy-blocktime and
    /// postcopy-vcpu-blocktime (with the postcopy-blocktime capability), and the Modular-specific
    /// x-modular-fault-latency (count, median, p99, max in µs, fault to placement, page-channel reads
    /// included; once postcopy has ended also samples-us, each latency in placement order), and x-modular-page-channel-reads (faults served by the page channel, without
    /// REQ_PAGES; x-modular-page-channel-failures when some reads fell back), and
    /// x-modular-postcopy-placement ("map": shared memory mapped with minor faults; "copy"). QMP loop.
    /// </summary>
    /// <param name="reply">The reply built by <see cref="MigrationStats.ToQmp"/>.</param>
    public void AddPostcopyFigures(JsonObject reply)
    {
        ArgumentNullException.ThrowIfNull(reply);
        if (_postcopyRam is not { } ram)
        {
            return;
        }

        if (_settings.Snapshot().Has("postcopy-blocktime"))
        {
            // Per vCPU: fault to placement of the pages each vCPU's thread faulted on first (the
            // fault backend names the thread). The total is QEMU's "all vCPUs blocked" time; only
            // vCPU 0 runs in Modular's machines (the others stay parked, see KVM-NOTES), so that
            // is vCPU 0's. Faults of other threads (a device load) count only in the latency figures.
            long[] perVcpu = ram.Latency.VcpuBlocktimeMs();
            reply["postcopy-blocktime"] = perVcpu.Length > 0 ? perVcpu[0] : 0;
            reply["postcopy-vcpu-blocktime"] = new JsonArray(perVcpu.Select(ms => (JsonNode)ms).ToArray());
        }

        reply["x-modular-fault-latency"] = ram.Latency.ToQmp(withSamples: PostcopyState.Current == State.PostcopyState.End);
        if (_faultThread is { } faults)
        {
            reply["x-modular-fault-latency"]!["requests"] = faults.RequestsSent;
        }

        reply["x-modular-postcopy-placement"] = ram.MapsEveryBlockShared ? "map" : "copy";
        if (Volatile.Read(ref _packageTimes) is { } times)
        {
            // This side's share of the time the guest runs nowhere, which QEMU's downtime (the
            // source's, until the package is sent) does not include.
            reply["x-modular-run-after-package-ms"] = Math.Round(System.Diagnostics.Stopwatch.GetElapsedTime(times.ReadAt, times.RunAt).TotalMilliseconds, 1);
            if (_machine.LastVcpuResumedAt() is { } resumed && resumed >= times.ReadAt)
            {
                // RUN wakes the vCPU threads; each may still wait for a core before the guest runs.
                reply["x-modular-vcpus-ran-after-package-ms"] = Math.Round(System.Diagnostics.Stopwatch.GetElapsedTime(times.ReadAt, resumed).TotalMilliseconds, 1);
            }
        }
        reply["x-modular-page-channel-reads"] = _pageChannel?.Reads ?? 0;
        if (_pageChannel is { Failures: > 0 } failing)
        {
            reply["x-modular-page-channel-failures"] = failing.Failures;
        }
    }
}
