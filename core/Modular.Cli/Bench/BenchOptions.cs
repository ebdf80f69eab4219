namespace Modular.Cli.Bench;

/// <summary>What <c>modular bench</c> measures.</summary>
/// <param name="MemoryBytes">Guest RAM of the migrated guests (1 GiB by default).</param>
/// <param name="Transports">The transports to migrate over (tcp, unix).</param>
/// <param name="SocketBytes">How much the plain-socket baseline moves per transport.</param>
/// <param name="Scenarios">The migration rows to run (<see cref="AllScenarios"/> by default).</param>
internal sealed record BenchOptions(ulong MemoryBytes, IReadOnlyList<string> Transports, ulong SocketBytes, IReadOnlyList<string> Scenarios)
{
    /// <summary>Config overrides (<c>KEY=VALUE</c>, as <c>modular run --set</c>) given to every migrated guest's process, both sides.</summary>
    public IReadOnlyList<string> Settings { get; init; } = [];

    /// <summary>Where to keep each process's log (run at Debug level), or null to keep none.</summary>
    public string? LogDirectory { get; init; }

    /// <summary>The QEMU that runs each row again for comparison, or null to run none (<see cref="QemuNote"/> says why).</summary>
    public string? QemuPath { get; init; }

    /// <summary>
    /// How many times the postcopy row runs (the first with QEMU's comparison): one run has from one
    /// to a few hundred page requests, too few for a median or p99 of its own, so the targets read the
    /// requests of every run pooled.
    /// </summary>
    public int PostcopyRuns { get; init; } = 5;

    /// <summary>
    /// How many times each idle row (plain and multifd) runs (the first with QEMU's comparison and
    /// the memory-to-memory socket), each run against a plain socket measured just before it: on
    /// this host one run's time and the socket's figure each vary by a third within minutes, so
    /// issue 4's targets read the runs' median. Five, not three: a median of three moves with two
    /// slow runs, which one busy half-minute of the host makes (session 21: 47, 48 and 98 %).
    /// </summary>
    public int IdleRuns { get; init; } = 5;

    /// <summary>Why no QEMU runs, when <see cref="QemuPath"/> is null.</summary>
    public string QemuNote { get; init; } = "--qemu off";

    /// <summary>The scenario names <c>--scenarios</c> accepts, in the order they run.</summary>
    public static IReadOnlyList<string> AllScenarios { get; } = ["idle", "dirtying", "multifd", "postcopy", "tls", "recovery"];

    /// <summary>The full run: 1 GiB guests over tcp and unix, 2 GiB through the plain sockets, every scenario.</summary>
    public static BenchOptions Default { get; } = new(1UL << 30, ["tcp", "unix"], 2UL << 30, AllScenarios);

    /// <summary>A quick run: 256 MiB guests, 512 MiB through the plain sockets.</summary>
    public static BenchOptions Quick { get; } = new(256UL << 20, ["tcp", "unix"], 512UL << 20, AllScenarios) { PostcopyRuns = 2, IdleRuns = 1 };
}
