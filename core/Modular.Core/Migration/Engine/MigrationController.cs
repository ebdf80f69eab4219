using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Modular.Abstractions.Plugins;
using Modular.Abstractions.Transports;
using Modular.Core.Machine;
using Modular.Core.Migration.State;
using Modular.Core.Plugins;
using Modular.Core.Qmp;

namespace Modular.Core.Migration.Engine;

/// <summary>
/// A machine's migration front end: its capabilities and parameters, the current (or last) outgoing
/// or incoming migration, and the QMP commands that drive them with QEMU's names and shapes:
/// migrate, migrate-incoming, migrate_cancel, migrate-set/query-capabilities, migrate-set/query-parameters,
/// query-migrate. It raises MIGRATION and MIGRATION_PASS events (when the "events" capability is on,
/// as QEMU does). QMP loop, except where noted.
/// </summary>
public sealed class MigrationController
{
    private readonly VirtualMachine _machine;
    private readonly PluginCatalog _plugins;
    private readonly ILoggerFactory _loggers;
    private readonly object _gate = new();
    private OutgoingMigration? _outgoing;
    private IncomingMigration? _incoming;

    /// <summary>Creates the controller for <paramref name="machine"/>.</summary>
    /// <param name="machine">The machine.</param>
    /// <param name="plugins">Where transports are found.</param>
    /// <param name="loggers">Logging.</param>
    /// <exception cref="Config.ConfigException">A tls-creds-x509 object of the config cannot be read (see <see cref="MigrationSettings(Config.MigrationConfig)"/>).</exception>
    public MigrationController(VirtualMachine machine, PluginCatalog plugins, ILoggerFactory? loggers = null)
    {
        _machine = machine;
        _plugins = plugins;
        _loggers = loggers ?? NullLoggerFactory.Instance;
        Settings = new MigrationSettings(machine.Config.Migration);

        // Process-wide: the transport plugins' receive threads read it too. One machine per process.
        Abstractions.Threading.LatencyThreads.Policy = Settings.LatencyThreads;
        DirtyRate = new DirtyRateMeter(machine.Ram);
    }

    /// <summary>Capabilities and parameters.</summary>
    public MigrationSettings Settings { get; }

    /// <summary>calc-dirty-rate and query-dirty-rate for this machine.</summary>
    public DirtyRateMeter DirtyRate { get; }

    /// <summary>True while an outgoing or incoming migration of this machine runs. Any thread.</summary>
    public bool MigrationRunning
    {
        get
        {
            lock (_gate)
            {
                return _outgoing is { Status.IsFinished: false } || _incoming is { Status.IsFinished: false };
            }
        }
    }

    /// <summary>
    /// Compiles the outgoing migration's code ahead, at the lowest priority, so that a later
    /// migration's setup and switch do not wait for the JIT. For a machine that may be migrated away
    /// (started with QMP); once per process; returns at once. Any thread.
    /// </summary>
    /// <remarks>Also lets every transport plugin that can (<see cref="IWarmUpPlugin"/>) do its first-use work.</remarks>
    public void PrepareAhead()
    {
        _ = SwitchWarmUp.StartAheadAsync(_machine.StateSections());
        ILogger logger = _loggers.CreateLogger("migration");
        foreach (string scheme in _plugins.Names(PluginKind.Transport))
        {
            try
            {
                WarmUp(_plugins.GetTransport(scheme), logger);
            }
            catch (PluginException)
            {
                // Claimed twice (or gone): a migration over it reports that itself.
            }
        }
    }

    /// <summary>Calls <paramref name="plugin"/>'s <see cref="IWarmUpPlugin.WarmUp"/>, if it has one; a failure is only logged (its connections then pay the first-use cost).</summary>
    internal static void WarmUp(object plugin, ILogger logger)
    {
        if (plugin is not IWarmUpPlugin warmUp)
        {
            return;
        }

        try
        {
            warmUp.WarmUp();
        }
        catch (Exception ex)
        {
            logger.LogDebug(ex, "{Plugin} could not warm up ahead; its first connection does that work instead", plugin.GetType().Name);
        }
    }

    /// <summary>The current or last outgoing migration.</summary>
    public OutgoingMigration? Outgoing
    {
        get
        {
            lock (_gate)
            {
                return _outgoing;
            }
        }
    }

    /// <summary>The current or last incoming migration.</summary>
    public IncomingMigration? Incoming
    {
        get
        {
            lock (_gate)
            {
                return _incoming;
            }
        }
    }

    /// <summary>Raised for MIGRATION and MIGRATION_PASS events (name, data). Any thread.</summary>
    public event Action<string, JsonObject?>? EventRaised;

    /// <summary>The TLS settings for a migration from tls-creds and tls-hostname; null without tls-creds.</summary>
    /// <exception cref="QmpException">The credentials are missing or for the other end, or TLS cannot run on the URI.</exception>
    private Tls.TlsSession? ResolveTls(MigrationSettingsSnapshot settings, TransportEndpoint endpoint, bool outgoing)
    {
        try
        {
            return Tls.TlsSession.For(Settings.TlsCredentials, settings.TlsCreds, settings.TlsHostname, endpoint, outgoing, settings.TlsAuthz);
        }
        catch (ArgumentException ex)
        {
            throw QmpException.Generic(ex.Message);
        }
    }

    /// <summary>Starts an outgoing migration to <paramref name="uri"/>.</summary>
    /// <param name="uri">A migration URI such as tcp:127.0.0.1:4444.</param>
    /// <exception cref="QmpException">A migration is already running, or the URI or its plugin is wrong.</exception>
    public OutgoingMigration StartOutgoing(string uri)
    {
        lock (_gate)
        {
            if (MigrationRunning)
            {
                throw QmpException.Generic("There's a migration process in progress");
            }

            if (_machine.RunState is QmpRunState.InMigrate)
            {
                throw QmpException.Generic("Guest is waiting for an incoming migration");
            }

            if (DirtyRate.ReadsDirtyLog)
            {
                throw QmpException.Generic("A dirty rate measurement in dirty-bitmap mode is reading the dirty log; migrate once query-dirty-rate says it is measured.");
            }

            (IMigrationTransport transport, TransportEndpoint endpoint) = ResolveTransport(uri);
            MigrationSettingsSnapshot settings = Settings.Snapshot();
            var migration = new OutgoingMigration(_machine, transport, endpoint, settings, _loggers.CreateLogger("migration"))
            {
                Tls = ResolveTls(settings, endpoint, outgoing: true),
            };
            Wire(migration.Status, migration.Settings);
            migration.PassStarted += pass => EmitIf(migration.Settings, "MIGRATION_PASS", new JsonObject { ["pass"] = pass });
            _outgoing = migration;
            migration.Start();
            return migration;
        }
    }

    /// <summary>
    /// The machine is exiting: an incoming migration stops, and in postcopy (running or paused) lets
    /// go of the vCPUs that wait for pages (see <see cref="IncomingMigration.AbandonForExit"/>), so
    /// that the machine's threads can end. Any thread.
    /// </summary>
    public void AbandonForExit() => Incoming?.AbandonForExit();

    /// <summary>
    /// migrate with resume=true (QEMU's postcopy recovery): the paused outgoing migration connects to
    /// <paramref name="uri"/>, where the destination listens after migrate-recover, and goes on.
    /// </summary>
    /// <param name="uri">The destination's recovery URI.</param>
    /// <exception cref="QmpException">No migration is paused (QEMU's message), or the URI or its plugin is wrong.</exception>
    public void ResumeOutgoing(string uri)
    {
        lock (_gate)
        {
            if (_outgoing is not { Status.Current: MigrationStatus.PostcopyPaused } outgoing)
            {
                throw QmpException.Generic("Cannot resume if there is no paused migration");
            }

            (IMigrationTransport transport, TransportEndpoint endpoint) = ResolveTransport(uri);
            if (!outgoing.Resume(transport, endpoint, ResolveTls(outgoing.Settings, endpoint, outgoing: true)))
            {
                throw QmpException.Generic("Cannot resume if there is no paused migration");
            }
        }
    }

    /// <summary>
    /// migrate-pause (QEMU's): pauses the postcopy migration on this side by ending its connection;
    /// the other side pauses as for a failed connection. Needs x-modular-postcopy-recovery: without it
    /// a paused postcopy would be a failed one, and the guest lost.
    /// </summary>
    /// <exception cref="QmpException">No postcopy migration with the capability is active here.</exception>
    public void PauseMigration()
    {
        OutgoingMigration? outgoing = Outgoing;
        IncomingMigration? incoming = Incoming;
        if (outgoing?.PauseOnRequest() == true || incoming?.PauseOnRequest() == true)
        {
            return;
        }

        bool active = outgoing?.Status.Current is MigrationStatus.PostcopyActive or MigrationStatus.PostcopyRecover
            || incoming?.Status.Current is MigrationStatus.PostcopyActive or MigrationStatus.PostcopyRecover;
        throw QmpException.Generic(active
            ? "migrate-pause needs the x-modular-postcopy-recovery capability, set on both sides before the migration: without it a paused postcopy migration fails and the guest is lost"
            : "migrate-pause is currently only supported during postcopy-active or postcopy-recover state");
    }

    /// <summary>
    /// migrate-recover (QEMU's): the paused incoming postcopy migration listens on <paramref name="uri"/>
    /// for the source's migrate with resume=true; returns once bound.
    /// </summary>
    /// <param name="uri">Where to listen (port 0 picks one; query-migrate does not show it, so give a port).</param>
    /// <exception cref="QmpException">No incoming migration is paused (QEMU's messages), or the URI is wrong.</exception>
    public async Task RecoverIncomingAsync(string uri)
    {
        IncomingMigration? incoming = Incoming;
        if (incoming is null || incoming.Status.Current is not (MigrationStatus.PostcopyPaused or MigrationStatus.PostcopyRecover))
        {
            throw QmpException.Generic("Migrate recover can only be run when postcopy is paused.");
        }

        (IMigrationTransport transport, TransportEndpoint endpoint) = ResolveTransport(uri);
        try
        {
            if (!await incoming.RecoverAsync(transport, endpoint, ResolveTls(Settings.Snapshot(), endpoint, outgoing: false)).ConfigureAwait(false))
            {
                throw QmpException.Generic("Migrate recovery is triggered already");
            }
        }
        catch (TransportException ex)
        {
            throw QmpException.Generic(ex.Message);
        }
    }

    /// <summary>
    /// migrate-start-postcopy: asks the running outgoing migration to switch to postcopy at its next
    /// iteration boundary; harmless after the end (QEMU's errors otherwise).
    /// </summary>
    /// <exception cref="QmpException">postcopy-ram is not set, or no migration was started.</exception>
    public void StartPostcopy()
    {
        OutgoingMigration? outgoing = Outgoing;
        bool enabled = outgoing?.Settings.Has("postcopy-ram") ?? Settings.Snapshot().Has("postcopy-ram");
        if (!enabled)
        {
            throw QmpException.Generic("Enable postcopy with migrate_set_capability before the start of migration");
        }

        if (outgoing is null)
        {
            throw QmpException.Generic("Postcopy must be started after migration has been started");
        }

        outgoing.RequestPostcopy();
    }

    /// <summary>Starts listening for an incoming migration on <paramref name="uri"/>; returns once bound.</summary>
    /// <param name="uri">A migration URI such as tcp:0.0.0.0:4444 (port 0 picks one).</param>
    /// <exception cref="QmpException">The machine is not waiting for a migration, or the URI is wrong.</exception>
    public async Task<IncomingMigration> StartIncomingAsync(string uri)
    {
        IncomingMigration migration;
        lock (_gate)
        {
            if (_machine.RunState != QmpRunState.InMigrate)
            {
                throw QmpException.Generic("'-incoming' was not specified on the command line");
            }

            if (_incoming is not null && _incoming.Status.Current != MigrationStatus.Failed)
            {
                throw QmpException.Generic("The incoming migration has already been started");
            }

            (IMigrationTransport transport, TransportEndpoint endpoint) = ResolveTransport(uri);
            migration = new IncomingMigration(_machine, transport, endpoint, Settings, _loggers.CreateLogger("migration"), () => _plugins.GetFaultBackend(Settings.FaultBackend))
            {
                Tls = ResolveTls(Settings.Snapshot(), endpoint, outgoing: false),
            };
            Wire(migration.Status, Settings.Snapshot());
            _incoming = migration;
        }

        try
        {
            await migration.ListenAsync().ConfigureAwait(false);
        }
        catch (TransportException ex)
        {
            throw QmpException.Generic(ex.Message);
        }

        return migration;
    }

    private (IMigrationTransport, TransportEndpoint) ResolveTransport(string uri)
    {
        TransportEndpoint endpoint;
        try
        {
            endpoint = TransportEndpoint.Parse(uri);
        }
        catch (FormatException ex)
        {
            throw QmpException.Generic(ex.Message);
        }

        try
        {
            IMigrationTransport transport = _plugins.GetTransport(endpoint.Scheme);
            Abstractions.Plugins.PluginAvailability availability = transport.Probe();
            if (!availability.IsUsable)
            {
                throw QmpException.Generic($"Transport '{endpoint.Scheme}' cannot be used on this host: {availability.Reason}");
            }

            return (transport, endpoint);
        }
        catch (PluginException ex)
        {
            throw QmpException.Generic(ex.Message);
        }
    }

    private void Wire(MigrationStatusMachine status, MigrationSettingsSnapshot settings) =>
        status.Changed += s => EmitIf(settings, "MIGRATION", new JsonObject { ["status"] = s.ToQmp() });

    private void EmitIf(MigrationSettingsSnapshot settings, string name, JsonObject data)
    {
        if (settings.Has("events"))
        {
            EventRaised?.Invoke(name, data);
        }
    }

    /// <summary>query-migrate: the outgoing migration's figures, else the incoming one's, else {}.</summary>
    public JsonObject Query()
    {
        OutgoingMigration? outgoing = Outgoing;
        IncomingMigration? incoming = Incoming;
        if (outgoing is not null)
        {
            JsonObject reply = outgoing.Stats.ToQmp(outgoing.Status.Current, outgoing.Error, outgoing: true);
            outgoing.AddThrottleFigures(reply);
            AddRecoveryFigures(reply, outgoing.Settings, outgoing.Recoveries, outgoing.PauseReason);
            return reply;
        }

        if (incoming is not null && incoming.Status.Current != MigrationStatus.None)
        {
            JsonObject reply = incoming.Stats.ToQmp(incoming.Status.Current, incoming.Error, outgoing: false);
            incoming.AddPostcopyFigures(reply);
            AddRecoveryFigures(reply, Settings.Snapshot(), incoming.Recoveries, incoming.PauseReason);
            return reply;
        }

        return new JsonObject();
    }

    /// <summary>
    /// With x-modular-postcopy-recovery: x-modular-postcopy-recoveries (recoveries that went back to
    /// postcopy-active) and, while paused or recovering, x-modular-postcopy-pause-reason (what ended
    /// the connection).
    /// </summary>
    private static void AddRecoveryFigures(JsonObject reply, MigrationSettingsSnapshot settings, int recoveries, string? pauseReason)
    {
        if (!settings.Has("x-modular-postcopy-recovery"))
        {
            return;
        }

        reply["x-modular-postcopy-recoveries"] = recoveries;
        if (pauseReason is not null)
        {
            reply["x-modular-postcopy-pause-reason"] = pauseReason;
        }
    }
}
