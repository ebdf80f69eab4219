using System.Buffers;
using System.Diagnostics;
using Microsoft.Extensions.Logging;
using Modular.Abstractions.Devices;
using Modular.Abstractions.Faults;
using Modular.Abstractions.Transports;
using Modular.Core.Machine;
using Modular.Core.Memory;
using Modular.Core.Migration.State;
using Modular.Core.Migration.Stream;

namespace Modular.Core.Migration.Engine;

/// <summary>
/// One incoming (destination) migration: listens, accepts one connection, and loads the stream:
/// header, configuration, commands, the "ram" section's pages, every device and vCPU section
/// (validated by its own Load), EOF. Then it answers SHUT on the return path and starts the guest.
/// </summary>
/// <remarks>
/// Threads: <see cref="LoadAsync"/> is the main incoming task (QEMU's incoming coroutine): it alone
/// reads the forward path until postcopy's LISTEN hands the stream to the listen thread. Return-path
/// writes go through <see cref="ReturnPathWriter"/>, whose lock serialises them.
/// </remarks>
public sealed partial class IncomingMigration
{
    private readonly VirtualMachine _machine;
    private readonly IMigrationTransport _transport;
    private readonly TransportEndpoint _endpoint;
    private Multifd.MultifdReceiver? _multifd;
    private readonly MigrationSettings _settings;
    private readonly ILogger _logger;
    private readonly CancellationTokenSource _cancel = new();
    private readonly Dictionary<uint, SectionTarget> _sectionsById = new();
    private IMigrationListener? _listener;
    private ReturnPathWriter? _returnPath;
    private volatile string? _error;
    // Populating RAM while waiting for the source: through the guest's mapping (precopy), or only the
    // memory of shared RAM (postcopy); the second also drops what the first did when postcopy-ram
    // comes late. Both stop at ADVISE as needed (see Advise).
    private Task _guestPopulate = Task.CompletedTask;
    private readonly CancellationTokenSource _guestPopulateStop = new();
    private Task _guestDrop = Task.CompletedTask;
    private Task _memoryPopulate = Task.CompletedTask;
    private long _eofAt;
    private readonly CancellationTokenSource _memoryPopulateStop = new();
    private bool _ramPreparedForPostcopy;
    private Dictionary<(string, uint), ISaveVmSection> _devices = new();
    private RamLoader? _ramLoader;
    private IMigrationConnection? _connection;

    /// <summary>Prepares an incoming migration into <paramref name="machine"/>, which must be in inmigrate.</summary>
    /// <param name="machine">The destination machine (built with <see cref="MachineStartMode.Incoming"/>).</param>
    /// <param name="transport">The transport plugin for the endpoint's scheme.</param>
    /// <param name="endpoint">Where to listen.</param>
    /// <param name="settings">The destination's capabilities (postcopy-ram must be set here too).</param>
    /// <param name="logger">Logging.</param>
    /// <param name="faultBackend">Finds the fault backend a postcopy destination uses (at POSTCOPY_ADVISE); null: postcopy is refused.</param>
    public IncomingMigration(VirtualMachine machine, IMigrationTransport transport, TransportEndpoint endpoint, MigrationSettings settings, ILogger logger, Func<IFaultBackendFactory>? faultBackend = null)
    {
        _faultBackend = faultBackend;
        _machine = machine;
        _transport = transport;
        _endpoint = endpoint;
        _settings = settings;
        _listenPriority = new ListenThreadPriority(
            settings.PostcopyListenNice,
            () => PostcopyState.Current >= State.PostcopyState.Running && machine.GuestRanSinceResumeWatch());
        _logger = logger;
    }

    /// <summary>The migration's status.</summary>
    public MigrationStatusMachine Status { get; } = new();

    /// <summary>Counters for query-migrate.</summary>
    public MigrationStats Stats { get; } = new();

    /// <summary>TLS for every channel (the tls-creds parameter when migrate-incoming ran), or null for plain channels.</summary>
    public Tls.TlsSession? Tls { get; init; }

    /// <summary>Why the migration failed, once it has.</summary>
    public string? Error => _error;

    /// <summary>The endpoint actually bound (the real port when 0 was asked for), once listening.</summary>
    public TransportEndpoint? BoundEndpoint => _listener?.Endpoint;

    /// <summary>Completes when the migration has finished; faults with the error when it failed.</summary>
    public Task Completion { get; private set; } = Task.CompletedTask;

    /// <summary>Binds the listener (errors surface here, at once) and starts waiting for the source. QMP loop or main thread.</summary>
    /// <returns>The endpoint actually bound.</returns>
    public async Task<TransportEndpoint> ListenAsync()
    {
        _listener = await _transport.ListenAsync(_endpoint, _cancel.Token).ConfigureAwait(false);
        MigrationController.WarmUp(_transport, _logger);
        _machine.PrepareIncomingStart();
        _ = SwitchWarmUp.StartAsync(_machine.StateSections(), incoming: true).ContinueWith(
            t => _logger.LogDebug("Migration code compiled ahead in {Ms:F0} ms ({Cpu:F0} ms of CPU) while waiting", t.Result.TotalMilliseconds, SwitchWarmUp.CpuTime.TotalMilliseconds),
            CancellationToken.None, TaskContinuationOptions.OnlyOnRanToCompletion, TaskScheduler.Default);
        // Like QEMU with preallocated RAM: take the first-touch cost while waiting. Safe alongside
        // loading (populating never replaces a present page). For postcopy only shared memory is
        // populated, and only through its second mapping: the guest's mapping must stay empty so
        // that every page faults until it has arrived; private memory is dropped at ADVISE anyway.
        if (!_settings.Snapshot().Has("postcopy-ram"))
        {
            _guestPopulate = OnOwnThread(() => Populate(guestMapping: true, _guestPopulateStop.Token));
        }
        else
        {
            _ramPreparedForPostcopy = true;
            PreparePostcopyWhileWaiting();
            if (AllRamShared)
            {
                _memoryPopulate = OnOwnThread(() => Populate(guestMapping: false, _memoryPopulateStop.Token));
            }
        }

        Completion = Task.Run(AcceptAndLoadAsync);
        return _listener.Endpoint;
    }

    /// <summary>
    /// postcopy-ram was set on this destination after it started listening: stop populating the
    /// guest's mapping and empty it now, while waiting, rather than inside the migration's setup at
    /// POSTCOPY_ADVISE (measured: about 250 ms for 1 GiB); shared memory keeps what was populated and
    /// goes on populating through its second mapping, private memory is dropped. Also prepares the
    /// fault backend and page maps. Harmless once a source connected. QMP loop.
    /// </summary>
    public void PostcopyEnabledWhileWaiting()
    {
        if (Status.Current != MigrationStatus.None || _ramPreparedForPostcopy)
        {
            return;
        }

        _ramPreparedForPostcopy = true;
        PreparePostcopyWhileWaiting();
        _guestPopulateStop.Cancel();
        Task populating = _guestPopulate;
        bool shared = AllRamShared;
        _guestDrop = OnOwnThread(() =>
        {
            populating.Wait();
            foreach (RamBlock block in _machine.Ram.Blocks)
            {
                // Shared memory keeps what was populated (only the guest's mapping goes); private memory is dropped.
                if (shared)
                {
                    block.Unmap(0, block.Size);
                }
                else
                {
                    block.Discard(0, block.Size);
                }
            }
        });
        if (shared)
        {
            Task dropping = _guestDrop;
            _memoryPopulate = OnOwnThread(() =>
            {
                dropping.Wait();
                Populate(guestMapping: false, _memoryPopulateStop.Token);
            });
        }
    }

    /// <summary>
    /// Runs blocking RAM work (madvise over the whole of RAM: up to seconds) on a thread of its own,
    /// not a pool thread: on a 2-core host the pool has two, and accepting the source must not wait.
    /// </summary>
    private static Task OnOwnThread(Action work) =>
        Task.Factory.StartNew(work, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);

    private bool AllRamShared => _machine.Ram.Blocks.All(b => b.IsShared);

    /// <summary>Populates every RAM block, through the guest's mapping or (shared memory) only the memory. Its own thread (<see cref="OnOwnThread"/>).</summary>
    private void Populate(bool guestMapping, CancellationToken stop)
    {
        long started = System.Diagnostics.Stopwatch.GetTimestamp();
        foreach (RamBlock block in _machine.Ram.Blocks)
        {
            block.Populate(stop, memoryOnly: !guestMapping);
        }

        _logger.LogDebug(
            "Guest RAM populated ({Which}) in {Ms:F0} ms{Stopped}",
            guestMapping ? "guest mapping" : "memory only",
            System.Diagnostics.Stopwatch.GetElapsedTime(started).TotalMilliseconds,
            stop.IsCancellationRequested ? ", stopped early" : string.Empty);
    }

    /// <summary>Stops waiting or loading. Any thread.</summary>
    public void Cancel() => _cancel.Cancel();

    private async Task AcceptAndLoadAsync()
    {
        IMigrationConnection? connection = null;
        try
        {
            connection = await _listener!.AcceptAsync(_cancel.Token).ConfigureAwait(false);
            if (Tls is { } tls)
            {
                IMigrationConnection accepted = connection;
                connection = null;
                connection = await tls.WrapAsync(accepted, _cancel.Token).ConfigureAwait(false);
            }

            Status.MoveTo(MigrationStatus.Setup);
            _logger.LogDebug("Incoming migration: {Connection} connected", connection.RemoteDescription);
            _connection = connection;
            MigrationSettingsSnapshot settings = _settings.Snapshot();
            if (settings.Has("multifd"))
            {
                IMigrationConnection accepted = connection;
                _multifd = await Multifd.MultifdReceiver.AcceptAsync(accepted, settings.MultifdChannels, _machine.Ram, Stats, ex => accepted.Abort(ex), _cancel.Token).ConfigureAwait(false);
                _logger.LogInformation("Incoming migration: {Channels} multifd channels accepted", settings.MultifdChannels);
            }

            await LoadAsync(connection).ConfigureAwait(false);
            if (_listenTask is { } listen)
            {
                // Postcopy: the main task is done with the stream; the listen thread ends the migration.
                await listen.ConfigureAwait(false);
                Stats.SetFinished();
                Status.MoveTo(MigrationStatus.Completed);
                PostcopyState.MoveTo(State.PostcopyState.End);
                _logger.LogInformation("Incoming postcopy migration on {Endpoint} completed in {Ms} ms; {Requests} page requests, {Reads} page-channel reads", _endpoint, Stats.TotalMs, _faultThread?.RequestsSent ?? 0, _pageChannel?.Reads ?? 0);
                if (_postcopyRam is { } placed && _logger.IsEnabled(LogLevel.Debug))
                {
                    _logger.LogDebug("Postcopy fault-to-placement latencies in microseconds, in placement order: {Samples}", placed.Latency.Samples());
                    _logger.LogDebug("Pages mapped ahead of the run they were written into: {OnFault} on their fault, {OnCopy} when their requested copy came", placed.MappedAheadOnFault, placed.MappedAheadOnCopy);
                }

                return;
            }

            long loaded = Stopwatch.GetTimestamp();
            if (_multifd is not null)
            {
                await _multifd.CompleteAsync(_cancel.Token).ConfigureAwait(false);
            }

            long channelsEnded = Stopwatch.GetTimestamp();
            Stats.SetFinished();
            Status.MoveTo(MigrationStatus.Completed);
            _machine.CompleteIncoming();
            _logger.LogDebug(
                "Incoming completion: the stream's end read {Description:F1} ms after EOF, multifd channels ended {Channels:F1} ms later, guest started {Start:F1} ms later",
                Stopwatch.GetElapsedTime(_eofAt, loaded).TotalMilliseconds,
                Stopwatch.GetElapsedTime(loaded, channelsEnded).TotalMilliseconds,
                Stopwatch.GetElapsedTime(channelsEnded).TotalMilliseconds);
            _logger.LogInformation("Incoming migration on {Endpoint} completed in {Ms} ms", _endpoint, Stats.TotalMs);
            if (_ramLoader is { Direct: not null } ram)
            {
                _logger.LogDebug("Pages received straight into guest RAM: {Pages}; direct receives that met another record: {Misses}", ram.DirectPages, ram.DirectMisses);
            }
        }
        catch (Exception ex)
        {
            AbortPostcopy();
            ex = Migration.Tls.TlsSession.Unwrap(ex);
            _error = ex is MigrationStreamException or DeviceStateException or TransportException
                ? "Incoming migration failed: " + ex.Message
                : "Incoming migration failed: " + ex.GetType().Name + ": " + ex.Message;
            if (PostcopyState.Current >= State.PostcopyState.Listening)
            {
                _error = _error.TrimEnd('.') + ". Postcopy was running, so the guest's RAM here is incomplete: its vCPUs were stopped and it is not resumed (the seed's warning: a failure during postcopy loses the guest).";
            }
            Stats.SetFinished();
            if (Status.Current == MigrationStatus.None)
            {
                Status.TryMoveTo(MigrationStatus.Setup, out _);
            }

            Status.TryMoveTo(MigrationStatus.Failed, out _);
            _logger.LogError("{Error}", _error);
            if (_returnPath is not null)
            {
                await _returnPath.TrySendAsync(ReturnPathMessage.Shut(1)).ConfigureAwait(false);
            }

            throw new IncomingMigrationException(_error, ex);
        }
        finally
        {
            _faultThread?.Stop();
            await StopPreemptReaderAsync().ConfigureAwait(false);
            if (connection is not null)
            {
                await TransportCleanup.DisposeAsync(connection, _logger, connection.RemoteDescription).ConfigureAwait(false);
            }

            foreach (IMigrationConnection recovered in _recoveredConnections)
            {
                await TransportCleanup.DisposeAsync(recovered, _logger, recovered.RemoteDescription).ConfigureAwait(false);
            }

            foreach (IMigrationListener recovery in _recoveryListeners)
            {
                await TransportCleanup.DisposeAsync(recovery, _logger, recovery.Endpoint.ToString()).ConfigureAwait(false);
            }

            _multifd?.Dispose();
            _packageThread?.Dispose();
            _postcopyRam?.Dispose();
            _gcQuiet?.Dispose();
            DisposeUnusedPostcopyPreparation();
            _pageChannel?.Dispose();

            if (_listener is not null)
            {
                await TransportCleanup.DisposeAsync(_listener, _logger, _listener.Endpoint.ToString()).ConfigureAwait(false);
            }
        }
    }

    /// <summary>
    /// Precopy pages received straight into guest RAM where the transport can (<see cref="IDirectReceive"/>,
    /// RamLoader.Direct.cs); <c>MODULAR_DIRECT_RECEIVE=off</c> in the environment turns it off (for comparison).
    /// </summary>
    internal static bool DirectReceive { get; } =
        !string.Equals(Environment.GetEnvironmentVariable("MODULAR_DIRECT_RECEIVE"), "off", StringComparison.Ordinal);

    /// <summary>The main incoming task: reads and applies the whole precopy stream.</summary>
    private async Task LoadAsync(IMigrationConnection connection)
    {
        var reader = new MigrationStreamReader(connection.Transport.Input, cancellationToken: _cancel.Token);
        await StreamHeader.ReadFromAsync(reader).ConfigureAwait(false);
        Dictionary<(string, uint), ISaveVmSection> devices = _machine.StateSections().ToDictionary(s => (s.IdString, s.InstanceId));
        _devices = devices;
        var ram = new RamLoader(_machine.Ram, Stats)
        {
            Multifd = _multifd,
            Direct = _multifd is null && DirectReceive ? connection as IDirectReceive : null,
        };
        _ramLoader = ram;
        bool activeReported = false;
        while (true)
        {
            long at = reader.Position;
            SectionType type = await reader.ReadSectionTypeAsync().ConfigureAwait(false);
            if (!activeReported && type is not (SectionType.Configuration or SectionType.Command))
            {
                Status.MoveTo(MigrationStatus.Active);
                activeReported = true;
            }

            switch (type)
            {
                case SectionType.Configuration:
                    ConfigurationSection configuration = await ConfigurationSection.ReadFromAsync(reader).ConfigureAwait(false);
                    if (configuration.MachineType != OutgoingMigration.MachineType)
                    {
                        throw reader.ErrorAt(at, $"machine type '{configuration.MachineType}' does not match this machine's '{OutgoingMigration.MachineType}'");
                    }

                    break;
                case SectionType.Command:
                    StreamCommand command = await StreamCommand.ReadFromAsync(reader).ConfigureAwait(false);
                    await HandleCommandAsync(command, connection, reader, at).ConfigureAwait(false);
                    if (_listenTask is not null)
                    {
                        // The package ran LISTEN: the listen thread owns the stream from here on.
                        return;
                    }

                    break;
                case SectionType.Start or SectionType.Full:
                    SectionHeader header = await SectionHeader.ReadFromAsync(reader, type).ConfigureAwait(false);
                    if (type == SectionType.Full && header.IdString == PageChannelSection.Name)
                    {
                        await LoadPageChannelSectionAsync(header, connection, reader, at).ConfigureAwait(false);
                        break;
                    }

                    if (type == SectionType.Full && header.IdString == PreemptChannelSection.Name)
                    {
                        await LoadPreemptSectionAsync(header, connection, reader, at).ConfigureAwait(false);
                        break;
                    }

                    SectionTarget target = Resolve(header, devices, ram, reader, at);
                    _sectionsById[header.SectionId] = target;
                    await LoadSectionBodyAsync(target, header, reader, at).ConfigureAwait(false);
                    break;
                case SectionType.Part or SectionType.End:
                    SectionHeader part = await SectionHeader.ReadFromAsync(reader, type).ConfigureAwait(false);
                    if (!_sectionsById.TryGetValue(part.SectionId, out SectionTarget? known))
                    {
                        throw reader.ErrorAt(at, $"section id {part.SectionId} was never started");
                    }

                    await LoadSectionBodyAsync(known, part, reader, at).ConfigureAwait(false);
                    break;
                case SectionType.Eof:
                    _eofAt = Stopwatch.GetTimestamp();
                    if (!ram.SawMemSize)
                    {
                        throw reader.ErrorAt(at, "EOF before any RAM: the stream carries no 'ram' section");
                    }

                    if (!await reader.IsAtEndAsync().ConfigureAwait(false) && await reader.PeekU8Async("VMDESCRIPTION") == (int)SectionType.VmDescription)
                    {
                        await reader.ReadSectionTypeAsync().ConfigureAwait(false);
                        await VmDescription.ReadFromAsync(reader).ConfigureAwait(false);
                    }

                    if (_returnPath is not null)
                    {
                        await _returnPath.SendAsync(ReturnPathMessage.Shut(0)).ConfigureAwait(false);
                        await WaitForSourceToCloseAsync(reader).ConfigureAwait(false);
                    }

                    return;
                default:
                    throw reader.ErrorAt(at, $"unexpected {type} record at the top level of the stream");
            }
        }
    }

    private SectionTarget Resolve(SectionHeader header, Dictionary<(string, uint), ISaveVmSection> devices, RamLoader ram, MigrationStreamReader reader, long at)
    {
        string id = header.IdString!;
        if (id == RamSaver.SectionName)
        {
            if (header.VersionId != RamSaver.SectionVersion)
            {
                throw reader.ErrorAt(at, $"section 'ram' has version {header.VersionId}; this machine reads version {RamSaver.SectionVersion}");
            }

            return new SectionTarget(id, header.InstanceId, null, ram);
        }

        if (!devices.TryGetValue((id, header.InstanceId), out ISaveVmSection? section))
        {
            string known = string.Join(", ", devices.Keys.Select(k => $"{k.Item1}/{k.Item2}"));
            throw reader.ErrorAt(at, $"unknown section '{id}' instance {header.InstanceId}: this machine has no such device (it has: ram, {known}); give the destination the same devices as the source");
        }

        if (header.VersionId > section.Version)
        {
            throw reader.ErrorAt(at, $"section '{id}' instance {header.InstanceId} has version {header.VersionId}, newer than this device supports ({section.Version}); upgrade the destination's plugin");
        }

        if (header.VersionId < section.MinimumVersion)
        {
            throw reader.ErrorAt(at, $"section '{id}' instance {header.InstanceId} has version {header.VersionId}, older than this device can read (minimum {section.MinimumVersion})");
        }

        return new SectionTarget(id, header.InstanceId, section, null);
    }

    private async Task LoadSectionBodyAsync(SectionTarget target, SectionHeader header, MigrationStreamReader reader, long at)
    {
        if (target.Ram is not null)
        {
            await target.Ram.LoadRecordsAsync(reader, header.Type == SectionType.Start).ConfigureAwait(false);
        }
        else
        {
            long lengthAt = reader.Position;
            uint length = await reader.ReadBe32Async("device state length").ConfigureAwait(false);
            byte[] state = await reader.ReadBlobAsync(length, 64 << 20, lengthAt, "device state").ConfigureAwait(false);
            try
            {
                target.Device!.Load(new SaveVmReader(state, $"{target.IdString}/{target.InstanceId}"), header.VersionId);
            }
            catch (DeviceStateException ex)
            {
                throw reader.ErrorAt(at, ex.Message.TrimEnd('.'));
            }
        }

        await SectionFooter.ReadFromAsync(reader, header.SectionId, target.IdString).ConfigureAwait(false);
    }

    private sealed record SectionTarget(string IdString, uint InstanceId, ISaveVmSection? Device, RamLoader? Ram);
}

/// <summary>An incoming migration failed; the message names the byte offset and record where it could.</summary>
public sealed class IncomingMigrationException : Exception
{
    /// <summary>Creates the exception.</summary>
    public IncomingMigrationException() { }

    /// <summary>Creates the exception with a message.</summary>
    /// <param name="message">What failed.</param>
    public IncomingMigrationException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and cause.</summary>
    /// <param name="message">What failed.</param>
    /// <param name="innerException">The cause.</param>
    public IncomingMigrationException(string message, Exception innerException) : base(message, innerException) { }
}
