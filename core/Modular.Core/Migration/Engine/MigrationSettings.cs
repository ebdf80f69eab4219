using Modular.Core.Config;

namespace Modular.Core.Migration.Engine;

/// <summary>
/// Migration capabilities and parameters of one machine, with QEMU's names, as set by
/// migrate-set-capabilities / migrate-set-parameters (or the config). A migration takes a snapshot
/// of them when it starts. Guarded by its own lock; any thread.
/// </summary>
public sealed class MigrationSettings
{
    private readonly object _gate = new();
    private readonly Dictionary<string, bool> _capabilities;
    private long _downtimeLimitMs;
    private ulong _maxBandwidth;
    private ulong _maxPostcopyBandwidth;
    private int _multifdChannels;
    private State.ThrottleParameters _throttle;
    private ulong _xbzrleCacheSize;
    private string _tlsCreds = string.Empty;
    private string _tlsHostname = string.Empty;
    private string _tlsAuthz = string.Empty;

    /// <summary>
    /// Starts from the config's migration section, and reads the files of the config's tls-creds-x509
    /// objects into <see cref="TlsCredentials"/> (as QEMU reads them at -object), so that a missing
    /// or bad file stops the machine at start and not in the middle of a migration.
    /// </summary>
    /// <param name="config">The validated migration section.</param>
    /// <exception cref="ConfigException">An object's file is missing or unreadable; the message names the object (<c>objects[N]</c>) and the file.</exception>
    public MigrationSettings(MigrationConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        _capabilities = new Dictionary<string, bool>(config.Capabilities, StringComparer.Ordinal);
        _downtimeLimitMs = config.DowntimeLimitMs;
        _maxBandwidth = config.MaxBandwidth;
        _maxPostcopyBandwidth = config.MaxPostcopyBandwidth;
        _multifdChannels = config.MultifdChannels;
        _throttle = config.Throttle;
        _xbzrleCacheSize = config.XbzrleCacheSize;
        _tlsCreds = config.TlsCreds;
        _tlsHostname = config.TlsHostname;
        _tlsAuthz = config.TlsAuthz;
        FaultBackend = config.FaultBackend;
        PostcopyListenNice = config.PostcopyListenNice;
        LatencyThreads = config.LatencyThreads;
        foreach (TlsCredentialsConfig tls in config.TlsObjects)
        {
            TlsCredentials.Add(tls.Load());
        }

        foreach (AuthzObjectConfig authz in config.AuthzObjects)
        {
            TlsCredentials.Add(authz.Load());
        }
    }

    /// <summary>The machine's TLS credentials objects, which the tls-creds parameter names.</summary>
    public Tls.TlsCredentialsRegistry TlsCredentials { get; } = new();

    /// <summary>The fault backend a postcopy destination uses.</summary>
    public string FaultBackend { get; }

    /// <summary>The nice value of a postcopy destination's listen thread while postcopy runs (0: unchanged); see <see cref="ListenThreadPriority"/>.</summary>
    public int PostcopyListenNice { get; }

    /// <summary>How the threads a page request travels through are scheduled (migration.latency-threads).</summary>
    public Abstractions.Threading.LatencyThreadPolicy LatencyThreads { get; }

    /// <summary>The capability names Modular knows.</summary>
    public static IReadOnlyList<string> KnownCapabilities => ConfigSchema.Capabilities;

    /// <summary>A consistent copy of the current values.</summary>
    public MigrationSettingsSnapshot Snapshot()
    {
        lock (_gate)
        {
            return new MigrationSettingsSnapshot(new Dictionary<string, bool>(_capabilities, StringComparer.Ordinal), _downtimeLimitMs, _maxBandwidth) { MultifdChannels = _multifdChannels, Throttle = _throttle, XbzrleCacheSize = _xbzrleCacheSize, MaxPostcopyBandwidth = _maxPostcopyBandwidth, TlsCreds = _tlsCreds, TlsHostname = _tlsHostname, TlsAuthz = _tlsAuthz };
        }
    }

    /// <summary>Sets capabilities; all or nothing.</summary>
    /// <param name="changes">Capability names and states.</param>
    /// <exception cref="ArgumentException">An unknown capability (the message lists the known ones), or postcopy-ram with multifd.</exception>
    public void SetCapabilities(IEnumerable<KeyValuePair<string, bool>> changes)
    {
        var list = changes.ToList();
        foreach ((string name, bool _) in list)
        {
            if (!_capabilities.ContainsKey(name))
            {
                throw new ArgumentException($"Capability '{name}' is not supported by Modular; supported: {string.Join(", ", KnownCapabilities)}.");
            }
        }

        lock (_gate)
        {
            bool State(string name) => list.FindLast(c => c.Key == name) is { Key: not null } change ? change.Value : _capabilities[name];
            if (State("postcopy-ram") && State("multifd"))
            {
                // QEMU's migrate_caps_check says the same.
                throw new ArgumentException("Postcopy is not yet compatible with multifd");
            }

            foreach ((string name, bool state) in list)
            {
                _capabilities[name] = state;
            }
        }
    }

    /// <summary>
    /// Sets the parameters given (null keeps a value): downtime-limit, max-bandwidth,
    /// multifd-channels, the auto-converge parameters and xbzrle-cache-size; all or nothing: every
    /// value is checked before any is set, as QEMU's migrate_params_check does. A migration takes
    /// them when it starts.
    /// </summary>
    /// <param name="downtimeLimitMs">New downtime-limit in ms, or null to keep.</param>
    /// <param name="maxBandwidth">New max-bandwidth in bytes/s, or null to keep.</param>
    /// <param name="multifdChannels">New multifd-channels, or null to keep.</param>
    /// <param name="throttle">Makes the new auto-converge parameters from the current ones, or null to keep them.</param>
    /// <param name="xbzrleCacheSize">New xbzrle-cache-size, or null to keep.</param>
    /// <param name="tlsCreds">New tls-creds (an object id, or empty for none), or null to keep.</param>
    /// <param name="tlsHostname">New tls-hostname (empty for the URI's host), or null to keep.</param>
    /// <param name="maxPostcopyBandwidth">New max-postcopy-bandwidth in bytes/s, or null to keep.</param>
    /// <param name="tlsAuthz">New tls-authz (an authorization object's id, or empty for none), or null to keep.</param>
    /// <exception cref="ArgumentOutOfRangeException">A value out of QEMU's range (the message names it).</exception>
    public void SetParameters(long? downtimeLimitMs, ulong? maxBandwidth, long? multifdChannels = null, Func<State.ThrottleParameters, State.ThrottleParameters>? throttle = null, ulong? xbzrleCacheSize = null, string? tlsCreds = null, string? tlsHostname = null, ulong? maxPostcopyBandwidth = null, string? tlsAuthz = null)
    {
        if (xbzrleCacheSize is { } cache && !MigrationConfig.IsValidXbzrleCacheSize(cache))
        {
            throw new ArgumentOutOfRangeException(nameof(xbzrleCacheSize), "Parameter 'xbzrle_cache_size' expects a power of two no less than the target page size");
        }

        if (downtimeLimitMs is < 0 or > 2_000_000)
        {
            throw new ArgumentOutOfRangeException(nameof(downtimeLimitMs), "Parameter 'downtime-limit' expects an integer in the range of 0 to 2000000 milliseconds");
        }

        if (multifdChannels is < 1 or > 255)
        {
            throw new ArgumentOutOfRangeException(nameof(multifdChannels), "Parameter 'multifd-channels' expects a value between 1 and 255");
        }

        lock (_gate)
        {
            State.ThrottleParameters nextThrottle = throttle?.Invoke(_throttle) ?? _throttle;
            if (nextThrottle.Problem() is { } problem)
            {
                throw new ArgumentOutOfRangeException(nameof(throttle), problem);
            }

            _downtimeLimitMs = downtimeLimitMs ?? _downtimeLimitMs;
            _maxBandwidth = maxBandwidth ?? _maxBandwidth;
            _maxPostcopyBandwidth = maxPostcopyBandwidth ?? _maxPostcopyBandwidth;
            _multifdChannels = (int?)multifdChannels ?? _multifdChannels;
            _throttle = nextThrottle;
            _xbzrleCacheSize = xbzrleCacheSize ?? _xbzrleCacheSize;
            _tlsCreds = tlsCreds ?? _tlsCreds;
            _tlsHostname = tlsHostname ?? _tlsHostname;
            _tlsAuthz = tlsAuthz ?? _tlsAuthz;
        }
    }
}

/// <summary>The capabilities and parameters one migration runs with.</summary>
/// <param name="Capabilities">Capability name to state.</param>
/// <param name="DowntimeLimitMs">downtime-limit.</param>
/// <param name="MaxBandwidth">max-bandwidth in bytes/s (0 = unlimited).</param>
public sealed record MigrationSettingsSnapshot(IReadOnlyDictionary<string, bool> Capabilities, long DowntimeLimitMs, ulong MaxBandwidth)
{
    /// <summary>True when <paramref name="name"/> is on.</summary>
    /// <param name="name">A capability name.</param>
    public bool Has(string name) => Capabilities.TryGetValue(name, out bool on) && on;

    /// <summary>multifd-channels: the channels a multifd migration opens.</summary>
    public int MultifdChannels { get; init; } = 2;

    /// <summary>The auto-converge parameters.</summary>
    public State.ThrottleParameters Throttle { get; init; } = State.ThrottleParameters.Default;

    /// <summary>max-postcopy-bandwidth in bytes/s (0 = unlimited): the rate limit from the switch to postcopy on.</summary>
    public ulong MaxPostcopyBandwidth { get; init; }

    /// <summary>xbzrle-cache-size in bytes.</summary>
    public ulong XbzrleCacheSize { get; init; } = MigrationConfig.DefaultXbzrleCacheSize;

    /// <summary>tls-creds: the id of the TLS credentials the migration's channels use; empty for none (plain).</summary>
    public string TlsCreds { get; init; } = string.Empty;

    /// <summary>tls-hostname: the name the source checks the destination's certificate against; empty for the host of a tcp URI.</summary>
    public string TlsHostname { get; init; } = string.Empty;

    /// <summary>tls-authz: the id of the authorization a destination checks the source's certificate against; empty for none (any certificate its CA signed).</summary>
    public string TlsAuthz { get; init; } = string.Empty;
}
