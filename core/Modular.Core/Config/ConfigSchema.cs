namespace Modular.Core.Config;

/// <summary>The shape a config value must have.</summary>
public enum ConfigValueKind
{
    /// <summary>Not a valid kind.</summary>
    Invalid = 0,

    /// <summary>A string.</summary>
    String = 1,

    /// <summary>A size such as 256M.</summary>
    Size = 2,

    /// <summary>A whole number.</summary>
    Integer = 3,

    /// <summary>true or false.</summary>
    Boolean = 4,

    /// <summary>An object of further keys.</summary>
    Section = 5,

    /// <summary>A list of strings.</summary>
    StringList = 6,

    /// <summary>A list of device objects.</summary>
    DeviceList = 7,

    /// <summary>A list of QOM objects in QEMU's object-add shape (<c>qom-type</c>, <c>id</c> and the type's own keys).</summary>
    ObjectList = 8,
}

/// <summary>One documented config key (docs/config.md lists exactly these).</summary>
/// <param name="Path">Dotted JSON path, e.g. <c>machine.memory</c>.</param>
/// <param name="Kind">The expected shape.</param>
/// <param name="Default">The default, as the docs print it.</param>
/// <param name="Description">One line for the docs.</param>
/// <param name="Choices">For strings with a closed set of values.</param>
public sealed record ConfigKey(string Path, ConfigValueKind Kind, string Default, string Description, string[]? Choices = null)
{
    /// <summary>The last part of the path.</summary>
    public string Name => Path[(Path.LastIndexOf('.') + 1)..];

    /// <summary>The path of the enclosing section, or empty.</summary>
    public string Parent => Path.Contains('.', StringComparison.Ordinal) ? Path[..Path.LastIndexOf('.')] : string.Empty;
}

/// <summary>Every key Modular's config file knows. Device sections' own keys belong to the device plugins.</summary>
public static class ConfigSchema
{
    /// <summary>The migration capabilities Modular knows, with QEMU's names.</summary>
    public static readonly string[] Capabilities =
    [
        "postcopy-ram", "postcopy-preempt", "return-path", "postcopy-blocktime", "events", "zero-blocks", "pause-before-switchover", "multifd", "auto-converge", "xbzrle",
        "x-modular-postcopy-recovery",
    ];

    /// <summary>Every key, in documentation order.</summary>
    public static readonly IReadOnlyList<ConfigKey> Keys =
    [
        new("machine", ConfigValueKind.Section, "", "The virtual machine."),
        new("machine.accelerator", ConfigValueKind.String, "kvm", "kvm runs guest code on /dev/kvm; synthetic runs no guest code, only a workload thread that reads and dirties guest RAM (for hosts without KVM and for tests).", ["kvm", "synthetic"]),
        new("machine.memory", ConfigValueKind.Size, "256M", "Guest RAM size: bytes, or a number with K, M, G or T (binary units). A multiple of the page size."),
        new("machine.vcpus", ConfigValueKind.Integer, "1", "Number of vCPUs (1 to 64)."),
        new("machine.kernel", ConfigValueKind.String, "(none)", "A Multiboot v1 kernel image (ELF32 or a.out kludge), loaded as QEMU's -kernel. Relative paths are relative to the config file. Required with kvm unless the machine is started with --incoming."),
        new("machine.hugepages", ConfigValueKind.Boolean, "false", "Back guest RAM with 2 MiB hugetlbfs pages (needs pages reserved in /proc/sys/vm/nr_hugepages). Precopy and postcopy both work; give both sides the same setting."),
        new("machine.memory-backend", ConfigValueKind.String, "auto", "What backs guest RAM (without machine.hugepages): anonymous is private memory; memfd is shared memory (QEMU's memory-backend-memfd), with which a postcopy destination maps arriving pages instead of copying them and faults its RAM in while it waits; auto is memfd when started with --incoming, else anonymous.", ["auto", "anonymous", "memfd"]),
        new("machine.paused", ConfigValueKind.Boolean, "false", "Start with the vCPUs stopped, as QEMU's -S; resume with QMP cont."),
        new("machine.synthetic", ConfigValueKind.Section, "", "The synthetic accelerator's workload."),
        new("machine.synthetic.pages-per-second", ConfigValueKind.Integer, "20000", "Pages the workload dirties per second (0 = as fast as it can)."),
        new("devices", ConfigValueKind.DeviceList, "[{\"id\": \"com1\", \"type\": \"serial\"}]", "The devices: a list of objects with type (a device type a plugin offers), an optional id, and the device's own keys (see docs/devices.md)."),
        new("objects", ConfigValueKind.ObjectList, "[]", "Objects, as QEMU's -object / object-add: a list of {\"qom-type\": \"tls-creds-x509\", \"id\": ID, \"dir\": DIR, \"endpoint\": \"client\" or \"server\", \"verify-peer\": true or false}, x509 credentials for migration TLS (dir holds QEMU's files: ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem, client-key.pem, and is relative to the config file; endpoint defaults to client, a source; verify-peer to true; modular tls-creds writes a set), {\"qom-type\": \"authz-simple\", \"id\": ID, \"identity\": \"CN=...\"} (the one source certificate subject a TLS destination accepts), {\"qom-type\": \"authz-list\", \"id\": ID, \"policy\": \"deny\", \"rules\": [{\"match\": \"CN=...\", \"policy\": \"allow\", \"format\": \"exact\" or \"glob\"}]} (QEMU's rule list, given inline) and {\"qom-type\": \"authz-listfile\", \"id\": ID, \"filename\": FILE, \"refresh\": true} (QEMU's JSON rule list; relative to the config file; read again at each check unless refresh is false). Files are read when the machine starts."),
        new("migration", ConfigValueKind.Section, "", "Live migration."),
        new("migration.capabilities", ConfigValueKind.Section, "", "QEMU migration capabilities, each true or false (as migrate-set-capabilities)."),
        .. Capabilities.Select(c => new ConfigKey("migration.capabilities." + c, ConfigValueKind.Boolean, "false", c == "x-modular-postcopy-recovery"
            ? "Modular's postcopy recovery, on both sides: a connection that fails during postcopy pauses the migration (postcopy-paused) instead of failing it; migrate-recover on the destination and migrate with resume=true on the source go on (QEMU's recovery, which QEMU always enables)."
            : $"The '{c}' capability (QEMU semantics).")),
        new("migration.parameters", ConfigValueKind.Section, "", "QEMU migration parameters (as migrate-set-parameters)."),
        new("migration.parameters.downtime-limit", ConfigValueKind.Integer, "300", "Largest acceptable downtime in milliseconds."),
        new("migration.parameters.max-bandwidth", ConfigValueKind.Size, "0", "Bandwidth cap in bytes per second; 0 means unlimited (QEMU's default is 128M)."),
        new("migration.parameters.max-postcopy-bandwidth", ConfigValueKind.Size, "0", "Bandwidth cap of postcopy's background pages in bytes per second, from the switch to postcopy on (max-bandwidth applies before it); 0 means unlimited, as in QEMU. Requested pages are never held back by it."),
        new("migration.parameters.tls-authz", ConfigValueKind.String, "(none)", "The id of an authz-simple, authz-list or authz-listfile object in objects: a TLS destination then accepts only sources whose certificate's subject it allows; none means any source whose certificate the CA signed."),
        new("migration.parameters.multifd-channels", ConfigValueKind.Integer, "2", "Channels the multifd capability opens (1 to 255); both sides must use the same number."),
        new("migration.parameters.xbzrle-cache-size", ConfigValueKind.Size, "64M", "xbzrle: the source's cache of pages as last sent, in bytes; a power of two of at least 4K."),
        new("migration.parameters.tls-creds", ConfigValueKind.String, "(none)", "The id of a tls-creds-x509 object in objects: the migration's channels use TLS with these credentials (endpoint client on the source, server on the destination); none means plain channels."),
        new("migration.parameters.tls-hostname", ConfigValueKind.String, "(none)", "The name the source checks the destination's certificate against; none means the host of the tcp URI."),
        new("migration.parameters.cpu-throttle-initial", ConfigValueKind.Integer, "20", "auto-converge: the first CPU throttle, in percent (1 to 99)."),
        new("migration.parameters.cpu-throttle-increment", ConfigValueKind.Integer, "10", "auto-converge: how much each later step adds, in percent (1 to 99)."),
        new("migration.parameters.max-cpu-throttle", ConfigValueKind.Integer, "99", "auto-converge: the highest CPU throttle, in percent (1 to 99)."),
        new("migration.parameters.throttle-trigger-threshold", ConfigValueKind.Integer, "50", "auto-converge: a period of at least a second counts as too dirty when the guest dirtied more than this percentage of the bytes sent in it (1 to 100); two such periods raise the throttle."),
        new("migration.parameters.cpu-throttle-tailslow", ConfigValueKind.Boolean, "false", "auto-converge: raise the throttle only by what the dirty rate needs, up to cpu-throttle-increment."),
        new("migration.fault-backend", ConfigValueKind.String, "userfaultfd", "The fault backend plugin a postcopy destination uses."),
        new("migration.postcopy-listen-nice", ConfigValueKind.Integer, "-10", "A postcopy destination's listen thread (it places the background pages) runs at this nice value (-20 to 19) while postcopy runs, so that the running guest does not slow the end of postcopy; 0 leaves it at the process's priority, as QEMU does. Needs CAP_SYS_NICE to go below 0; without it nothing changes."),
        new("migration.latency-threads", ConfigValueKind.String, "realtime", "How the threads a postcopy page request travels through run (the destination's fault thread and preempt channel receiver, the source's return-path reader): realtime is SCHED_FIFO at the lowest real-time priority, so that a request takes a core from bulk-copy threads at once (falls back to nice -20 without CAP_SYS_NICE); nice is nice -20; off leaves them at the process's priority, as QEMU does. They sleep between messages and do microseconds of work per message.", ["realtime", "nice", "off"]),
        new("migration.incoming", ConfigValueKind.String, "(none)", "Wait for an incoming migration on this URI (as QEMU's -incoming), e.g. tcp:0.0.0.0:4444, unix:/run/mig.sock, file:/tmp/vm.state."),
        new("plugins", ConfigValueKind.Section, "", "Plugin loading."),
        new("plugins.directories", ConfigValueKind.StringList, "[]", "Extra directories of plugin folders, searched after plugins/ beside the executable. Relative paths are relative to the config file."),
        new("qmp", ConfigValueKind.Section, "", "The QMP control socket."),
        new("qmp.socket", ConfigValueKind.String, "(none)", "Path of the QMP unix socket (created with mode 0600)."),
    ];

    /// <summary>The key at a dotted path (case-insensitive), or null.</summary>
    /// <param name="path">A dotted path.</param>
    public static ConfigKey? Find(string path) =>
        Keys.FirstOrDefault(k => string.Equals(k.Path, path, StringComparison.OrdinalIgnoreCase));

    /// <summary>The keys directly under <paramref name="parent"/>.</summary>
    /// <param name="parent">A dotted path, or empty for the top level.</param>
    public static IEnumerable<ConfigKey> ChildrenOf(string parent) =>
        Keys.Where(k => string.Equals(k.Parent, parent, StringComparison.OrdinalIgnoreCase));
}
