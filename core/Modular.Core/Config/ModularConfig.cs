using Modular.Abstractions.Devices;

namespace Modular.Core.Config;

/// <summary>A validated config file: what <c>modular run</c> starts.</summary>
/// <param name="Source">The file it came from, or "defaults".</param>
/// <param name="Machine">The machine section.</param>
/// <param name="Devices">The devices, in config order.</param>
/// <param name="Migration">The migration section.</param>
/// <param name="PluginDirectories">Extra plugin directories (absolute).</param>
/// <param name="QmpSocket">The QMP socket path, or null for none.</param>
public sealed record ModularConfig(
    string Source,
    MachineConfig Machine,
    IReadOnlyList<DeviceConfig> Devices,
    MigrationConfig Migration,
    IReadOnlyList<string> PluginDirectories,
    string? QmpSocket);

/// <summary>The machine section.</summary>
/// <param name="Accelerator">"kvm" or "synthetic".</param>
/// <param name="MemoryBytes">Guest RAM in bytes.</param>
/// <param name="Vcpus">Number of vCPUs.</param>
/// <param name="Kernel">Absolute path of the Multiboot image, or null.</param>
/// <param name="Hugepages">Back RAM with 2 MiB hugetlbfs pages.</param>
/// <param name="MemoryBackend">"auto", "anonymous" or "memfd" (ignored with <paramref name="Hugepages"/>).</param>
/// <param name="Paused">Start stopped (QEMU's -S).</param>
/// <param name="SyntheticPagesPerSecond">The synthetic workload's dirty rate (0 = unthrottled).</param>
public sealed record MachineConfig(string Accelerator, ulong MemoryBytes, int Vcpus, string? Kernel, bool Hugepages, string MemoryBackend, bool Paused, long SyntheticPagesPerSecond);

/// <summary>The migration section.</summary>
/// <param name="Capabilities">Capability name to state, for every known capability.</param>
/// <param name="DowntimeLimitMs">downtime-limit in milliseconds.</param>
/// <param name="MaxBandwidth">max-bandwidth in bytes per second (0 = unlimited).</param>
/// <param name="MultifdChannels">multifd-channels (1 to 255).</param>
/// <param name="FaultBackend">The fault backend name for postcopy.</param>
/// <param name="PostcopyListenNice">The postcopy destination's listen thread's nice value from the guest's first run after POSTCOPY_RUN until postcopy ends (0: unchanged).</param>
/// <param name="Incoming">The incoming URI, or null.</param>
public sealed record MigrationConfig(IReadOnlyDictionary<string, bool> Capabilities, long DowntimeLimitMs, ulong MaxBandwidth, int MultifdChannels, string FaultBackend, int PostcopyListenNice, string? Incoming)
{
    /// <summary>The auto-converge parameters (cpu-throttle-initial and the rest); QEMU's defaults unless the config sets them.</summary>
    public Migration.State.ThrottleParameters Throttle { get; init; } = Migration.State.ThrottleParameters.Default;

    /// <summary>migration.latency-threads: how the threads a page request travels through are scheduled.</summary>
    public Modular.Abstractions.Threading.LatencyThreadPolicy LatencyThreads { get; init; } = Modular.Abstractions.Threading.LatencyThreadPolicy.RealTime;

    /// <summary>QEMU's default xbzrle-cache-size: 64 MiB.</summary>
    public const ulong DefaultXbzrleCacheSize = 64UL << 20;

    /// <summary>max-postcopy-bandwidth in bytes per second (0 = unlimited, QEMU's default).</summary>
    public ulong MaxPostcopyBandwidth { get; init; }

    /// <summary>xbzrle-cache-size in bytes (QEMU's default unless the config sets it).</summary>
    public ulong XbzrleCacheSize { get; init; } = DefaultXbzrleCacheSize;

    /// <summary>QEMU's rule for xbzrle-cache-size: a power of two no less than the target page (4 KiB).</summary>
    public static bool IsValidXbzrleCacheSize(ulong bytes) => bytes >= 4096 && ulong.IsPow2(bytes);

    /// <summary>tls-creds: the id of an object in the config's objects list (a tls-creds-x509); empty for none.</summary>
    public string TlsCreds { get; init; } = string.Empty;

    /// <summary>tls-hostname: the name the source checks the destination's certificate against; empty for the host of a tcp URI.</summary>
    public string TlsHostname { get; init; } = string.Empty;

    /// <summary>tls-authz: the id of an authorization object (authz-simple, authz-listfile) in the objects list; empty for none.</summary>
    public string TlsAuthz { get; init; } = string.Empty;

    /// <summary>
    /// The tls-creds-x509 objects of the config's top-level objects list, in config order. Their
    /// files are read when the machine's <see cref="Migration.Engine.MigrationSettings"/> is made.
    /// </summary>
    public IReadOnlyList<TlsCredentialsConfig> TlsObjects { get; init; } = [];

    /// <summary>The authorization objects (authz-simple, authz-listfile) of the config's objects list, in config order.</summary>
    public IReadOnlyList<AuthzObjectConfig> AuthzObjects { get; init; } = [];
}

/// <summary>
/// One authorization object of the config's objects list, in QEMU's object-add shape:
/// <c>{"qom-type": "authz-simple", "id": "auth0", "identity": "CN=src.example"}</c>,
/// <c>{"qom-type": "authz-list", "id": "auth0", "policy": "deny", "rules": [{"match": "CN=src.example", "policy": "allow"}]}</c> or
/// <c>{"qom-type": "authz-listfile", "id": "auth0", "filename": "allowed.json", "refresh": true}</c>.
/// </summary>
/// <param name="Id">The object id, which the tls-authz parameter names.</param>
/// <param name="Type">authz-simple, authz-list or authz-listfile.</param>
/// <param name="Value">The identity (authz-simple), the rule list as QEMU's JSON (authz-list), or the rules file, absolute (authz-listfile).</param>
/// <param name="Refresh">authz-listfile: read the file again at each check.</param>
/// <param name="ConfigPath">Where the object is in the config (<c>objects[0]</c>), for messages.</param>
public sealed record AuthzObjectConfig(string Id, string Type, string Value, bool Refresh, string ConfigPath)
{
    /// <summary>Makes the authorization (an authz-listfile's file is read now).</summary>
    /// <exception cref="ConfigException">The rules file is missing or malformed; the message names the object and the file.</exception>
    public Migration.Tls.TlsAuthorization Load()
    {
        try
        {
            if (Type == Migration.Tls.TlsAuthorization.ListType)
            {
                using var doc = System.Text.Json.JsonDocument.Parse(Value);
                return Migration.Tls.ListAuthorization.Create(Id, doc.RootElement);
            }

            return Type == Migration.Tls.TlsAuthorization.SimpleType
                ? new Migration.Tls.SimpleAuthorization(Id, Value)
                : Migration.Tls.ListFileAuthorization.Load(Id, Value, Refresh);
        }
        catch (ArgumentException ex)
        {
            throw new ConfigException($"{ConfigPath}: {ex.Message}", ex);
        }
    }
}

/// <summary>
/// One tls-creds-x509 object of the config's objects list, in QEMU's object-add shape:
/// <c>{"qom-type": "tls-creds-x509", "id": "tls0", "dir": "certs", "endpoint": "server", "verify-peer": true}</c>.
/// </summary>
/// <param name="Id">The object id, which the tls-creds parameter names.</param>
/// <param name="Dir">The directory of the PEM files, absolute (the config gives it relative to itself).</param>
/// <param name="Endpoint">Client (a source) or server (a destination); QEMU's default is client.</param>
/// <param name="VerifyPeer">Check the peer's certificate against the CA; QEMU's default is true.</param>
/// <param name="ConfigPath">Where the object is in the config (<c>objects[0]</c>), for messages.</param>
public sealed record TlsCredentialsConfig(string Id, string Dir, Migration.Tls.TlsEndpoint Endpoint, bool VerifyPeer, string ConfigPath)
{
    /// <summary>QEMU's sanity-check (default true): refuse expired or not yet valid certificates when the files are read.</summary>
    public bool SanityCheck { get; init; } = true;

    /// <summary>Reads the object's files (<see cref="Migration.Tls.TlsCredentials.Load"/>).</summary>
    /// <exception cref="ConfigException">A file is missing or unreadable; the message names the object (<c>objects[N]</c>) and the file.</exception>
    public Migration.Tls.TlsCredentials Load()
    {
        try
        {
            return Migration.Tls.TlsCredentials.Load(Id, Dir, Endpoint, VerifyPeer, SanityCheck);
        }
        catch (ArgumentException ex)
        {
            throw new ConfigException($"{ConfigPath}: {ex.Message}", ex);
        }
    }
}
