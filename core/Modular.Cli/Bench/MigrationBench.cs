using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using Modular.Cli.Children;
using Modular.Core.Config;
using Modular.Core.Memory;
using Modular.Core.Migration.Tls;
using Modular.Core.Qmp;

namespace Modular.Cli.Bench;

/// <summary>
/// <c>modular bench</c>: in one run, a plain socket's loopback throughput over tcp and unix, then for
/// each transport a precopy migration of an idle filled guest (fill-halt) and of a dirtying guest (the
/// A/B guest) between two child <c>modular run</c> processes, with throughput, total time, downtime
/// and the ratio to the plain socket, plus the CPU time each child used while migrating (steadier than
/// wall-clock figures on a shared, loaded host). Where QEMU is installed, each row runs again between
/// two QEMUs (<see cref="QemuChild"/>) so that the comparison with QEMU is a ratio from one run.
/// A benchmark, never a timed test (DESIGN.md §6).
/// </summary>
internal static partial class MigrationBench
{
    private static readonly TimeSpan GuestReadyTimeout = TimeSpan.FromMinutes(5);
    private static readonly TimeSpan MigrationTimeout = TimeSpan.FromMinutes(5);
    private static readonly TimeSpan QemuMigrationTimeout = TimeSpan.FromMinutes(2);

    private const int SocketRounds = 3;

    private sealed record Scenario(string Key, string Name, string Kernel, char Ready, bool Postcopy = false, bool Multifd = false, bool Tls = false, bool Recovery = false)
    {
        /// <summary>An idle guest in precopy: every page is sent once, so the row's figure is throughput.</summary>
        public bool MeasuresThroughput => Kernel == "fill-halt.elf" && !Postcopy;
    }

    /// <summary>The id both sides give their TLS credentials in the tls row (endpoint client on the source, server on the destination).</summary>
    private const string TlsCredsId = "tls0";

    private sealed record Outcome(string Status, double TotalMs, double DowntimeMs, double SetupMs, double Transferred, int Syncs, string? Error, long Requests = 0, JsonObject? Incoming = null, TimeSpan SourceCpu = default, TimeSpan DestinationCpu = default, TimeSpan SourceVcpuCpu = default, TimeSpan DestinationVcpuCpu = default, double DowntimeLimitMs = 0, double MaxBandwidth = 0, string Program = "Modular")
    {
        /// <summary>The recovery row's figures (null for other rows, or when the migration ended before the pause).</summary>
        public RecoveryFigures? Recovery { get; init; }

        /// <summary>A Modular source's postcopy switch in parts (x-modular-postcopy-switch), or null.</summary>
        public JsonObject? Switch { get; init; }

        /// <summary>The switch's parts for a line: where a postcopy downtime went.</summary>
        public string SwitchText => Switch is null
            ? "the source did not report its switch"
            : string.Create(CultureInfo.InvariantCulture, $"vCPUs stopped in {Switch["stop-vcpus-ms"]} ms, sync and discards {Switch["sync-discards-ms"]} ms, package built in {Switch["package-ms"]} ms, sent in {Switch["send-ms"]} ms{(Switch["pong-after-package-ms"] is { } pong ? $"; the destination answered the PING after the package {pong} ms later" : "")}");

        /// <summary>Modular's fault-to-placement figures (x-modular-fault-latency) with the placement and the package-to-RUN time, from a postcopy destination.</summary>
        public JsonNode? FaultLatency
        {
            get
            {
                if (Incoming?["x-modular-fault-latency"]?.DeepClone() is not JsonObject figures)
                {
                    return null;
                }

                figures["placement"] = Incoming["x-modular-postcopy-placement"]?.DeepClone();
                figures["run-after-package-ms"] = Incoming["x-modular-run-after-package-ms"]?.DeepClone();
                figures["vcpus-ran-after-package-ms"] = Incoming["x-modular-vcpus-ran-after-package-ms"]?.DeepClone();
                return figures;
            }
        }
    }

    private static readonly Scenario[] Scenarios =
    [
        new("idle", "idle, filled", "fill-halt.elf", 'F'),
        new("dirtying", "dirtying (A/B)", "ab-guest.elf", 'A'),
        new("multifd", "idle, multifd", "fill-halt.elf", 'F', Multifd: true),
        new("postcopy", "postcopy A/B", "ab-guest.elf", 'A', Postcopy: true),
        new("tls", "idle, TLS", "fill-halt.elf", 'F', Tls: true),
        new("recovery", "postcopy, paused", "ab-guest.elf", 'A', Postcopy: true, Recovery: true),
    ];

    /// <summary>A PKI in QEMU's tls-creds-x509 layout for the tls row, written once per run; both programs read it.</summary>
    private static string TlsDirectory(string directory)
    {
        string pki = Path.Combine(directory, "pki");
        if (!File.Exists(Path.Combine(pki, TlsCredentials.CaCertFile)))
        {
            TlsCredentialsWriter.Write(pki, ["localhost", "127.0.0.1"], TimeSpan.FromDays(1));
        }

        return pki;
    }

    /// <summary>QMP object-add and migrate-set-parameters for the tls row: QEMU's commands, which Modular answers too.</summary>
    private static async Task SetTlsAsync(GuestChild child, string pki, bool server, string transport)
    {
        await child.Qmp.ExecuteAsync("object-add", new JsonObject
        {
            ["qom-type"] = TlsCredentials.QomType,
            ["id"] = TlsCredsId,
            ["dir"] = pki,
            ["endpoint"] = server ? "server" : "client",
        });
        var parameters = new JsonObject { ["tls-creds"] = TlsCredsId };
        if (!server && transport == "unix")
        {
            // A unix URI names no host for the certificate check (QEMU's rule too).
            parameters["tls-hostname"] = "localhost";
        }

        await child.Qmp.ExecuteAsync("migrate-set-parameters", parameters);
    }

    /// <summary>Runs the whole benchmark and writes the figures to <paramref name="output"/>; 0 when every migration completed.</summary>
    public static async Task<int> RunAsync(BenchOptions options, TextWriter output)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(output);
        CultureInfo c = CultureInfo.InvariantCulture;
        string directory = Directory.CreateTempSubdirectory("mbench").FullName;
        try
        {
            await output.WriteLineAsync($"modular bench: {ByteSize.Format(options.MemoryBytes)} guests over {string.Join(", ", options.Transports)}; {Environment.ProcessorCount} CPUs, load average {LoadAverage()}");
            if (options.Settings.Count > 0)
            {
                await output.WriteLineAsync($"every guest's process runs with --set {string.Join(" --set ", options.Settings)}");
            }

            await output.WriteLineAsync(options.QemuPath is null
                ? $"QEMU: not measured in this run ({options.QemuNote})"
                : $"QEMU: {options.QemuPath}; each row is also run between two QEMUs with the same guest, transport, capabilities, downtime-limit and max-bandwidth");

            // The median of three: on a shared host one measurement varies by a third.
            async Task<(double Median, double Min, double Max)> SocketRateAsync(string transport, ulong bytes)
            {
                var rates = new List<double>();
                for (int i = 0; i < SocketRounds; i++)
                {
                    rates.Add(await PlainSocketBench.MeasureAsync(transport, bytes, directory));
                }

                rates.Sort();
                return (rates[SocketRounds / 2], rates[0], rates[^1]);
            }

            // The same socket between guest-sized memories (PlainSocketBench's remarks), for the rows that
            // measure throughput: what the host allows when every byte comes from RAM and goes to RAM.
            // Mapped for each row and unmapped after, so the bench holds no more memory than its guests.
            string? memorySocketSkipped = null;
            async Task<(double Median, double Min, double Max)?> MemorySocketRateAsync(string transport)
            {
                GuestSizedMemory memory;
                try
                {
                    memory = GuestSizedMemory.Create(options.MemoryBytes);
                }
                catch (GuestRamAllocationException ex)
                {
                    // Only a reading beside the plain socket: say why, and measure the migrations anyway.
                    memorySocketSkipped = ex.Message;
                    return null;
                }

                using var owned = memory;
                var rates = new List<double>();
                for (int i = 0; i < SocketRounds; i++)
                {
                    rates.Add(await PlainSocketBench.MeasureAsync(transport, memory.Size, directory, memory));
                }

                rates.Sort();
                return (rates[SocketRounds / 2], rates[0], rates[^1]);
            }

            foreach (string transport in options.Transports)
            {
                (double rate, double min, double max) = await SocketRateAsync(transport, options.SocketBytes);
                await output.WriteLineAsync(string.Create(c, $"plain socket {transport,-4}: {rate / 1e9:F2} GB/s (median of {SocketRounds} runs of {ByteSize.Format(options.SocketBytes)}: {min / 1e9:F2}-{max / 1e9:F2})"));
            }

            await output.WriteLineAsync("(each row's \"vs socket\" divides by the plain socket measured again just before that row: this host's socket figure drifts by a factor of two within minutes)");
            await output.WriteLineAsync("(the plain socket moves a warm 1 MiB buffer; rows that measure throughput also give a memory-to-memory socket: the same bytes from and into guest-sized memory, as a migration moves them)");
            await output.WriteLineAsync();
            await output.WriteLineAsync("transport  guest            status     total     downtime  setup    transferred  throughput  vs socket  syncs");
            bool allCompleted = true;
            string? qemuPath = options.QemuPath;
            int n = 0;
            var judged = new List<BenchTargets.Row>();
            foreach (string transport in options.Transports)
            {
                foreach (Scenario scenario in Scenarios.Where(s => options.Scenarios.Contains(s.Key)))
                {
                    (double socketRate, double socketMin, double socketMax) = await SocketRateAsync(transport, options.SocketBytes / 2);
                    (double Median, double Min, double Max)? memoryRate = scenario.MeasuresThroughput ? await MemorySocketRateAsync(transport) : null;
                    Outcome outcome = await MigrateAsync(transport, scenario, options, directory, n++);
                    allCompleted &= outcome.Status == "completed";
                    double throughput = outcome.Transferred / Math.Max(outcome.TotalMs, 1) * 1000;
                    Outcome? qemu = null;
                    if (qemuPath is not null && outcome.Status == "completed")
                    {
                        try
                        {
                            qemu = await MigrateQemuAsync(qemuPath, transport, scenario, options, directory, n, outcome);
                        }
                        catch (Exception ex) when (ex is InvalidOperationException or TimeoutException or IOException or QmpErrorException or QmpConnectionException)
                        {
                            // QEMU is only the comparison: say why, and go on with Modular's rows alone.
                            qemu = new Outcome($"could not run ({ex.Message.Split('\n')[0].Trim()}); the remaining rows run without QEMU", 0, 0, 0, 0, 0, null, Program: "QEMU");
                            qemuPath = null;
                        }
                    }

                    var row = new BenchTargets.Row(transport, scenario.Key, outcome.Status == "completed", outcome.TotalMs, outcome.DowntimeMs, outcome.DowntimeLimitMs, throughput / socketRate, outcome.FaultLatency)
                    {
                        QemuTotalMs = qemu?.Status == "completed" ? qemu.TotalMs : null,
                        MemorySocketRatio = memoryRate is { } m ? throughput / m.Median : null,
                    };
                    await output.WriteLineAsync(string.Create(c,
                        $"{transport,-10} {scenario.Name,-16} {outcome.Status,-10} {outcome.TotalMs / 1000,6:F2} s  {outcome.DowntimeMs,5:F0} ms  {outcome.SetupMs,4:F0} ms  {outcome.Transferred / 1e9,8:F2} GB  {throughput / 1e9,6:F2} GB/s  {throughput / socketRate * 100,6:F0} %  {outcome.Syncs,5}"));
                    await output.WriteLineAsync(string.Create(c,
                        $"    plain socket just before: {socketRate / 1e9:F2} GB/s (median of {SocketRounds} runs of {ByteSize.Format(options.SocketBytes / 2)}: {socketMin / 1e9:F2}-{socketMax / 1e9:F2})"));
                    if (memoryRate is null && memorySocketSkipped is not null && scenario.MeasuresThroughput)
                    {
                        await output.WriteLineAsync("    memory-to-memory socket: not measured. " + memorySocketSkipped);
                    }

                    if (memoryRate is { } memorySocket)
                    {
                        await output.WriteLineAsync(string.Create(c,
                            $"    memory-to-memory socket just before: {memorySocket.Median / 1e9:F2} GB/s (median of {SocketRounds} runs of {ByteSize.Format(options.MemoryBytes)} from populated guest-sized private memory into populated shared memory: {memorySocket.Min / 1e9:F2}-{memorySocket.Max / 1e9:F2}); this row moved {throughput / memorySocket.Median * 100:F0} % of it"));
                    }
                    await output.WriteLineAsync(string.Create(c,
                        $"    CPU while migrating (until the source reports the end): source {outcome.SourceCpu.TotalSeconds:F2} s (its vCPUs {outcome.SourceVcpuCpu.TotalSeconds:F2} s), destination {outcome.DestinationCpu.TotalSeconds:F2} s (its vCPUs {outcome.DestinationVcpuCpu.TotalSeconds:F2} s)"));
                    if (scenario.Postcopy)
                    {
                        JsonNode? l = outcome.FaultLatency;
                        await output.WriteLineAsync(string.Create(c,
                            $"    postcopy: {outcome.Requests} page requests; fault to placement (destination, pages {(l?["placement"]?.ToString() == "map" ? "mapped from shared memory" : "copied")}): count {l?["count"]}, median {l?["median-us"]} us, p99 {l?["p99-us"]} us, max {l?["max-us"]} us, first {l?["first-us"]} us"));
                        await output.WriteLineAsync(string.Create(c,
                            $"    destination's vCPUs started {l?["run-after-package-ms"]} ms after it had read the package and ran again {l?["vcpus-ran-after-package-ms"]?.ToString() ?? "?"} ms after it (the guest runs nowhere for the downtime, the package's transfer and this)"));
                        await output.WriteLineAsync("    the downtime at the source: " + outcome.SwitchText);
                    }

                    if (scenario.Recovery)
                    {
                        await output.WriteLineAsync(RecoveryLine(outcome));
                    }

                    if (outcome.Error is not null)
                    {
                        await output.WriteLineAsync("    " + outcome.Error);
                    }

                    if (qemu is not null)
                    {
                        foreach (string line in QemuLines(qemu, outcome, scenario))
                        {
                            await output.WriteLineAsync(line);
                        }
                    }

                    if (scenario.Key is "idle" or "multifd" && options.IdleRuns > 1 && outcome.Status == "completed")
                    {
                        // Further runs of an idle row (plain or multifd), each against the plain socket measured just before it.
                        var runs = new List<BenchTargets.PrecopyRun> { new(outcome.TotalMs, outcome.DowntimeMs, throughput / socketRate) };
                        for (int run = 2; run <= options.IdleRuns; run++)
                        {
                            (double socketAgain, _, _) = await SocketRateAsync(transport, options.SocketBytes / 2);
                            Outcome again = await MigrateAsync(transport, scenario, options, directory, n++, suffix: $"-run{run}");
                            allCompleted &= again.Status == "completed";
                            double rate = again.Transferred / Math.Max(again.TotalMs, 1) * 1000;
                            await output.WriteLineAsync(string.Create(c,
                                $"    run {run}: {again.Status}, {again.TotalMs / 1000:F2} s, downtime {again.DowntimeMs:F0} ms, {rate / 1e9:F2} GB/s, {rate / socketAgain * 100:F0} % of the plain socket just before ({socketAgain / 1e9:F2} GB/s); CPU: source {again.SourceCpu.TotalSeconds:F2} s, destination {again.DestinationCpu.TotalSeconds:F2} s{(again.Error is null ? "" : "; " + again.Error)}"));
                            if (again.Status == "completed")
                            {
                                runs.Add(new BenchTargets.PrecopyRun(again.TotalMs, again.DowntimeMs, rate / socketAgain));
                            }
                        }

                        row = row with { PrecopyRuns = runs };
                        await output.WriteLineAsync(BenchTargets.PrecopyRunsLine(runs));
                    }

                    if (scenario.Postcopy && !scenario.Recovery && options.PostcopyRuns > 1 && outcome.Status == "completed")
                    {
                        // Further runs of the same row, so that the targets read enough page requests.
                        var runs = new List<BenchTargets.Run> { BenchTargets.Run.Of(outcome.TotalMs, outcome.DowntimeMs, outcome.FaultLatency) };
                        bool judgedSize = options.MemoryBytes == BenchTargets.TargetMemory;
                        for (int run = 2; BenchTargets.RunsAgain(run - 1, options.PostcopyRuns, runs, judgedSize); run++)
                        {
                            if (run == options.PostcopyRuns + 1)
                            {
                                await output.WriteLineAsync(string.Create(c,
                                    $"    {options.PostcopyRuns} runs made {runs.Sum(r => r.LatenciesUs.Count)} page requests, fewer than the {BenchTargets.RequestsForP99} a p99 needs: up to {(BenchTargets.MaxRunsFactor - 1) * options.PostcopyRuns} more runs"));
                            }

                            Outcome again = await MigrateAsync(transport, scenario, options, directory, n++, suffix: $"-run{run}");
                            allCompleted &= again.Status == "completed";
                            JsonNode? l = again.FaultLatency;
                            await output.WriteLineAsync(string.Create(c,
                                $"    run {run}: {again.Status}, {again.TotalMs / 1000:F2} s, downtime {again.DowntimeMs:F0} ms ({again.Switch?["stop-vcpus-ms"]} ms of it stopping the vCPUs; the destination's vCPUs ran again {l?["vcpus-ran-after-package-ms"]?.ToString() ?? "?"} ms after it read the package), {again.Requests} page requests: median {l?["median-us"]} us, p99 {l?["p99-us"]} us, first {l?["first-us"]} us{(again.Error is null ? "" : "; " + again.Error)}"));
                            if (again.Status == "completed")
                            {
                                runs.Add(BenchTargets.Run.Of(again.TotalMs, again.DowntimeMs, again.FaultLatency));
                            }
                        }

                        row = row with { Runs = runs };
                        await output.WriteLineAsync(BenchTargets.PooledLine(runs));
                    }

                    judged.Add(row);
                }
            }

            FaultRoundTrip.Result? uffd = FaultRoundTrip.Measure(2000, out string? why);
            await output.WriteLineAsync(uffd is null
                ? $"local userfaultfd round trip: not measured ({why})"
                : string.Create(c, $"local userfaultfd round trip (fault, placed by another thread): median {uffd.MedianUs:F1} us, p99 {uffd.P99Us:F1} us over {uffd.Count} faults"));
            await output.WriteLineAsync($"load average at the end: {LoadAverage()}");
            await output.WriteLineAsync();
            foreach (string line in BenchTargets.Lines(judged, options.MemoryBytes))
            {
                await output.WriteLineAsync(line);
            }

            return allCompleted ? 0 : 1;
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    /// <summary>One migration: destination, source, wait for the guest, migrate, poll until the end.</summary>
    /// <param name="suffix">Added to the kept logs' names (a repeated run's).</param>
    private static async Task<Outcome> MigrateAsync(string transport, Scenario scenario, BenchOptions options, string directory, int n, string suffix = "")
    {
        ulong memory = options.MemoryBytes;
        string[] common = [.. options.Settings.SelectMany(s => new[] { "--set", s }), .. options.LogDirectory is null ? Array.Empty<string>() : ["--log-level", "Debug"]];
        string listen = transport == "unix" ? "unix:" + Path.Combine(directory, $"mig{n}.sock") : transport + ":127.0.0.1:0";
        // A postcopy destination knows it from the start (as QEMU's with its capabilities set before
        // migrate-incoming), so that it prepares its RAM for postcopy while it waits.
        // The multifd row sets the capability on both sides from the start (config), with the default 2 channels.
        if (scenario.Multifd)
        {
            common = [.. common, "--set", "migration.capabilities.multifd=true"];
        }

        if (scenario.Recovery)
        {
            common = [.. common, "--set", "migration.capabilities.x-modular-postcopy-recovery=true"];
        }

        string[] destinationArguments = scenario.Postcopy
            ? [.. common, "--set", "migration.capabilities.postcopy-ram=true", "--set", "migration.capabilities.postcopy-preempt=true", "--set", "migration.capabilities.postcopy-blocktime=true"]
            : common;
        if (scenario.Tls)
        {
            // The destination listens from the start (--incoming), so its credentials come from the config.
            destinationArguments =
            [
                .. destinationArguments,
                "--set", "objects[0].qom-type=" + TlsCredentials.QomType,
                "--set", "objects[0].id=" + TlsCredsId,
                "--set", "objects[0].dir=" + TlsDirectory(directory),
                "--set", "objects[0].endpoint=server",
                "--set", "migration.parameters.tls-creds=" + TlsCredsId,
            ];
        }

        await using ModularChild destination = await ModularChild.StartAsync(directory, $"dst{n}", scenario.Kernel, memory, listen, destinationArguments);
        string uri = await destination.WaitForStdErrAsync("modular: listening for an incoming migration on ", TimeSpan.FromMinutes(1));
        await using ModularChild source = await ModularChild.StartAsync(directory, $"src{n}", scenario.Kernel, memory, incoming: null, common);
        using var keepLogs = new LogKeeper(options.LogDirectory, $"{transport}-{scenario.Key}{suffix}", source, destination);
        await source.WaitForSerialAsync(scenario.Ready, GuestReadyTimeout);
        if (scenario.Postcopy)
        {
            await source.Qmp.ExecuteAsync("migrate-set-capabilities", new JsonObject
            {
                ["capabilities"] = new JsonArray
                {
                    new JsonObject { ["capability"] = "postcopy-ram", ["state"] = true },
                    new JsonObject { ["capability"] = "postcopy-preempt", ["state"] = true },
                },
            });
        }

        if (scenario.Tls)
        {
            await SetTlsAsync(source, TlsDirectory(directory), server: false, transport);
        }

        JsonNode? parameters = await source.Qmp.ExecuteAsync("query-migrate-parameters");
        string recoverUri = transport == "unix" ? "unix:" + Path.Combine(directory, $"rec{n}.sock") : $"{transport}:127.0.0.1:{LoopbackPort.Free()}";
        return await RunMigrationAsync(source, destination, uri, scenario, Number(parameters?["downtime-limit"]), Number(parameters?["max-bandwidth"]), MigrationTimeout, recoverUri);
    }

    /// <summary>
    /// The same migration between two QEMUs: the same guest, memory and transport, the same
    /// capabilities (postcopy with preempt, or multifd) and the same downtime-limit and max-bandwidth
    /// as Modular's row (<paramref name="modular"/>); QEMU's own defaults would cap it at 128 MiB/s.
    /// </summary>
    private static async Task<Outcome> MigrateQemuAsync(string qemu, string transport, Scenario scenario, BenchOptions options, string directory, int n, Outcome modular)
    {
        string uri = transport == "unix" ? "unix:" + Path.Combine(directory, $"qmig{n}.sock") : $"tcp:127.0.0.1:{LoopbackPort.Free()}";
        await using QemuChild destination = await QemuChild.StartAsync(qemu, directory, $"qdst{n}", scenario.Kernel, options.MemoryBytes, incomingDefer: true);
        await using QemuChild source = await QemuChild.StartAsync(qemu, directory, $"qsrc{n}", scenario.Kernel, options.MemoryBytes, incomingDefer: false);
        using var keepLogs = new LogKeeper(options.LogDirectory, $"{transport}-{scenario.Key}-qemu", source, destination);
        await destination.Qmp.ExecuteAsync("migrate-set-capabilities", Capabilities(scenario, destination: true));
        if (scenario.Tls)
        {
            await SetTlsAsync(destination, TlsDirectory(directory), server: true, transport);
        }

        await destination.Qmp.ExecuteAsync("migrate-incoming", new JsonObject { ["uri"] = uri });
        await source.WaitForSerialAsync(scenario.Ready, GuestReadyTimeout);
        await source.Qmp.ExecuteAsync("migrate-set-capabilities", Capabilities(scenario, destination: false));
        if (scenario.Tls)
        {
            await SetTlsAsync(source, TlsDirectory(directory), server: false, transport);
        }

        await source.Qmp.ExecuteAsync("migrate-set-parameters", new JsonObject
        {
            ["downtime-limit"] = (long)modular.DowntimeLimitMs,
            ["max-bandwidth"] = modular.MaxBandwidth > 0 ? (long)modular.MaxBandwidth : UnlimitedForQemu,
        });
        string recoverUri = transport == "unix" ? "unix:" + Path.Combine(directory, $"qrec{n}.sock") : $"tcp:127.0.0.1:{LoopbackPort.Free()}";
        Outcome outcome = await RunMigrationAsync(source, destination, uri, scenario, modular.DowntimeLimitMs, modular.MaxBandwidth, QemuMigrationTimeout, recoverUri);
        return outcome with { Program = "QEMU " + source.Version };
    }

    // QEMU reads max-bandwidth 0 as no bandwidth at all; this is far beyond any loopback.
    private const long UnlimitedForQemu = 100_000_000_000;

    private static JsonObject Capabilities(Scenario scenario, bool destination)
    {
        var list = new JsonArray();
        void Add(string name) => list.Add(new JsonObject { ["capability"] = name, ["state"] = true });
        if (scenario.Postcopy)
        {
            Add("postcopy-ram");
            Add("postcopy-preempt");
            if (destination)
            {
                Add("postcopy-blocktime");
            }
        }

        if (scenario.Multifd)
        {
            Add("multifd");
        }

        return new JsonObject { ["capabilities"] = list };
    }


    /// <summary>Starts the migration on <paramref name="source"/> (and postcopy at once, for a postcopy row), then polls until it ends.</summary>
    private static async Task<Outcome> RunMigrationAsync(GuestChild source, GuestChild destination, string uri, Scenario scenario, double downtimeLimitMs, double maxBandwidth, TimeSpan timeout, string recoverUri)
    {
        TimeSpan sourceCpu = source.CpuTime;
        TimeSpan destinationCpu = destination.CpuTime;
        TimeSpan sourceVcpuCpu = source.VcpuCpuTime;
        TimeSpan destinationVcpuCpu = destination.VcpuCpuTime;
        await source.Qmp.ExecuteAsync("migrate", new JsonObject { ["uri"] = uri });
        if (scenario.Postcopy)
        {
            await source.Qmp.ExecuteAsync("migrate-start-postcopy");
        }

        var clock = Stopwatch.StartNew();
        RecoveryFigures? recovery = null;
        bool pauseDue = scenario.Recovery;
        while (true)
        {
            JsonObject info = await source.QueryMigrateAsync();
            string status = info["status"]?.GetValue<string>() ?? "none";
            if (pauseDue && status == "postcopy-active" && Number(info["ram"]?["transferred"]) > Number(info["ram"]?["total"]) / 8)
            {
                // An eighth of RAM sent in postcopy: pause, as a failed link would, and recover.
                pauseDue = false;
                recovery = await PauseAndRecoverAsync(source, destination, recoverUri, Number(info["ram"]?["transferred"]));
                continue;
            }

            if (status is "completed" or "failed" or "cancelled" || clock.Elapsed > timeout)
            {
                sourceCpu = source.CpuTime - sourceCpu;
                destinationCpu = destination.CpuTime - destinationCpu;
                sourceVcpuCpu = source.VcpuCpuTime - sourceVcpuCpu;
                destinationVcpuCpu = destination.VcpuCpuTime - destinationVcpuCpu;
                if (status is not ("completed" or "failed" or "cancelled"))
                {
                    await source.Qmp.ExecuteAsync("migrate_cancel");
                    status = $"timed out after {timeout.TotalMinutes:F0} min";
                }

                JsonNode? ram = info["ram"];
                JsonObject? incoming = null;
                if (scenario.Postcopy && status == "completed")
                {
                    // The destination's own figures (fault latency, blocktime) once it has ended too.
                    incoming = await destination.QueryMigrateAsync();
                    for (int i = 0; i < 100 && incoming["status"]?.GetValue<string>() != "completed"; i++)
                    {
                        await Task.Delay(50);
                        incoming = await destination.QueryMigrateAsync();
                    }
                }

                if (recovery is not null)
                {
                    recovery = recovery with { AfterBytes = Number(ram?["transferred"]) - recovery.AfterBytes };
                }

                return new Outcome(
                    status,
                    Number(info["total-time"]),
                    Number(info["downtime"]),
                    Number(info["setup-time"]),
                    Number(ram?["transferred"]),
                    (int)Number(ram?["dirty-sync-count"]),
                    info["error-desc"]?.GetValue<string>(),
                    (long)Number(ram?["postcopy-requests"]),
                    incoming,
                    sourceCpu,
                    destinationCpu,
                    sourceVcpuCpu,
                    destinationVcpuCpu,
                    downtimeLimitMs,
                    maxBandwidth) { Recovery = recovery, Switch = info["x-modular-postcopy-switch"]?.DeepClone() as JsonObject };
            }

            await Task.Delay(20);
        }
    }

    /// <summary>The lines printed under a Modular row for the same migration between two QEMUs.</summary>
    private static IEnumerable<string> QemuLines(Outcome qemu, Outcome modular, Scenario scenario)
    {
        CultureInfo c = CultureInfo.InvariantCulture;
        if (qemu.Status != "completed")
        {
            yield return $"    {qemu.Program}, the same migration: {qemu.Status}{(qemu.Error is null ? "" : ": " + qemu.Error)}";
            yield break;
        }

        double throughput = qemu.Transferred / Math.Max(qemu.TotalMs, 1) * 1000;
        yield return string.Create(c,
            $"    {qemu.Program}, the same migration: {qemu.TotalMs / 1000:F2} s, downtime {qemu.DowntimeMs:F0} ms, setup {qemu.SetupMs:F0} ms, {qemu.Transferred / 1e9:F2} GB at {throughput / 1e9:F2} GB/s, {qemu.Syncs} syncs; Modular took {modular.TotalMs / Math.Max(qemu.TotalMs, 1):F2} of QEMU's time");
        yield return string.Create(c,
            $"    QEMU's CPU while migrating: source {qemu.SourceCpu.TotalSeconds:F2} s (its vCPUs {qemu.SourceVcpuCpu.TotalSeconds:F2} s), destination {qemu.DestinationCpu.TotalSeconds:F2} s (its vCPUs {qemu.DestinationVcpuCpu.TotalSeconds:F2} s)");
        if (scenario.Postcopy)
        {
            double blocktime = Number(qemu.Incoming?["postcopy-blocktime"]);
            yield return string.Create(c,
                $"    QEMU's postcopy: {qemu.Requests} page requests, its vCPU blocked {blocktime:F0} ms in all{(qemu.Requests > 0 ? $" ({blocktime / qemu.Requests:F2} ms per request)" : "")}; Modular's: {Number(modular.Incoming?["postcopy-blocktime"]):F0} ms over {modular.Requests}");
        }

        if (scenario.Recovery)
        {
            yield return RecoveryLine(qemu);
        }
    }

    private static double Number(JsonNode? node) => node is null ? 0 : node.GetValue<double>();

    private static string LoadAverage()
    {
        try
        {
            return string.Join(' ', File.ReadAllText("/proc/loadavg").Split(' ').Take(3));
        }
        catch (IOException)
        {
            return "unknown";
        }
    }

    /// <summary>On dispose (the migration's end, failed or not), writes both processes' logs to the directory, if one was given.</summary>
    private sealed class LogKeeper(string? directory, string name, GuestChild source, GuestChild destination) : IDisposable
    {
        public void Dispose()
        {
            if (directory is null)
            {
                return;
            }

            File.WriteAllText(Path.Combine(directory, name + "-source.log"), source.StdErr);
            File.WriteAllText(Path.Combine(directory, name + "-destination.log"), destination.StdErr);
        }
    }
}
