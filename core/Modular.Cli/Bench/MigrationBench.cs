using Modular.Cli.Children;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using Modular.Core.Config;

namespace Modular.Cli.Bench;

/// <summary>
/// <c>modular bench</c>: in one run, a plain socket's loopback throughput over tcp and unix, then for
/// each transport a precopy migration of an idle filled guest (fill-halt) and of a dirtying guest (the
/// A/B guest) between two child <c>modular run</c> processes, with throughput, total time, downtime
/// and the ratio to the plain socket, plus the CPU time each child used while migrating (steadier than
/// wall-clock figures on a shared, loaded host). A benchmark, never a timed test (DESIGN.md §6).
/// </summary>
internal static class MigrationBench
{
    private static readonly TimeSpan GuestReadyTimeout = TimeSpan.FromMinutes(5);
    private static readonly TimeSpan MigrationTimeout = TimeSpan.FromMinutes(5);

    private const int SocketRounds = 3;

    private sealed record Scenario(string Key, string Name, string Kernel, char Ready, bool Postcopy = false, bool Multifd = false);

    private sealed record Outcome(string Status, double TotalMs, double DowntimeMs, double SetupMs, double Transferred, int Syncs, string? Error, long Requests = 0, JsonNode? FaultLatency = null, TimeSpan SourceCpu = default, TimeSpan DestinationCpu = default, TimeSpan SourceVcpuCpu = default, TimeSpan DestinationVcpuCpu = default, double DowntimeLimitMs = 0);

    private static readonly Scenario[] Scenarios =
    [
        new("idle", "idle, filled", "fill-halt.elf", 'F'),
        new("dirtying", "dirtying (A/B)", "ab-guest.elf", 'A'),
        new("multifd", "idle, multifd", "fill-halt.elf", 'F', Multifd: true),
        new("postcopy", "postcopy A/B", "ab-guest.elf", 'A', Postcopy: true),
    ];

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

            foreach (string transport in options.Transports)
            {
                (double rate, double min, double max) = await SocketRateAsync(transport, options.SocketBytes);
                await output.WriteLineAsync(string.Create(c, $"plain socket {transport,-4}: {rate / 1e9:F2} GB/s (median of {SocketRounds} runs of {ByteSize.Format(options.SocketBytes)}: {min / 1e9:F2}-{max / 1e9:F2})"));
            }

            await output.WriteLineAsync("(each row's \"vs socket\" divides by the plain socket measured again just before that row: this host's socket figure drifts by a factor of two within minutes)");
            await output.WriteLineAsync();
            await output.WriteLineAsync("transport  guest            status     total     downtime  setup    transferred  throughput  vs socket  syncs");
            bool allCompleted = true;
            int n = 0;
            var judged = new List<BenchTargets.Row>();
            foreach (string transport in options.Transports)
            {
                foreach (Scenario scenario in Scenarios.Where(s => options.Scenarios.Contains(s.Key)))
                {
                    (double socketRate, double socketMin, double socketMax) = await SocketRateAsync(transport, options.SocketBytes / 2);
                    Outcome outcome = await MigrateAsync(transport, scenario, options, directory, n++);
                    allCompleted &= outcome.Status == "completed";
                    double throughput = outcome.Transferred / Math.Max(outcome.TotalMs, 1) * 1000;
                    judged.Add(new BenchTargets.Row(transport, scenario.Key, outcome.Status == "completed", outcome.TotalMs, outcome.DowntimeMs, outcome.DowntimeLimitMs, throughput / socketRate, outcome.FaultLatency));
                    await output.WriteLineAsync(string.Create(c,
                        $"{transport,-10} {scenario.Name,-16} {outcome.Status,-10} {outcome.TotalMs / 1000,6:F2} s  {outcome.DowntimeMs,5:F0} ms  {outcome.SetupMs,4:F0} ms  {outcome.Transferred / 1e9,8:F2} GB  {throughput / 1e9,6:F2} GB/s  {throughput / socketRate * 100,6:F0} %  {outcome.Syncs,5}"));
                    await output.WriteLineAsync(string.Create(c,
                        $"    plain socket just before: {socketRate / 1e9:F2} GB/s (median of {SocketRounds} runs of {ByteSize.Format(options.SocketBytes / 2)}: {socketMin / 1e9:F2}-{socketMax / 1e9:F2})"));
                    await output.WriteLineAsync(string.Create(c,
                        $"    CPU while migrating (until the source reports the end): source {outcome.SourceCpu.TotalSeconds:F2} s (its vCPUs {outcome.SourceVcpuCpu.TotalSeconds:F2} s), destination {outcome.DestinationCpu.TotalSeconds:F2} s (its vCPUs {outcome.DestinationVcpuCpu.TotalSeconds:F2} s)"));
                    if (scenario.Postcopy)
                    {
                        JsonNode? l = outcome.FaultLatency;
                        await output.WriteLineAsync(string.Create(c,
                            $"    postcopy: {outcome.Requests} page requests; fault to placement (destination, pages {(l?["placement"]?.ToString() == "map" ? "mapped from shared memory" : "copied")}): count {l?["count"]}, median {l?["median-us"]} us, p99 {l?["p99-us"]} us, max {l?["max-us"]} us, first {l?["first-us"]} us"));
                        await output.WriteLineAsync(string.Create(c,
                            $"    destination's vCPUs started {l?["run-after-package-ms"]} ms after it had read the package (the guest runs nowhere for the downtime, the package's transfer and this)"));
                    }

                    if (outcome.Error is not null)
                    {
                        await output.WriteLineAsync("    " + outcome.Error);
                    }
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
    private static async Task<Outcome> MigrateAsync(string transport, Scenario scenario, BenchOptions options, string directory, int n)
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

        string[] destinationArguments = scenario.Postcopy
            ? [.. common, "--set", "migration.capabilities.postcopy-ram=true", "--set", "migration.capabilities.postcopy-preempt=true"]
            : common;
        await using ModularChild destination = await ModularChild.StartAsync(directory, $"dst{n}", scenario.Kernel, memory, listen, destinationArguments);
        string uri = await destination.WaitForStdErrAsync("modular: listening for an incoming migration on ", TimeSpan.FromMinutes(1));
        await using ModularChild source = await ModularChild.StartAsync(directory, $"src{n}", scenario.Kernel, memory, incoming: null, common);
        using var keepLogs = new LogKeeper(options.LogDirectory, $"{transport}-{scenario.Key}", source, destination);
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

        double downtimeLimitMs = Number((await source.Qmp.ExecuteAsync("query-migrate-parameters"))?["downtime-limit"]);
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
        while (true)
        {
            JsonObject info = await source.QueryMigrateAsync();
            string status = info["status"]?.GetValue<string>() ?? "none";
            if (status is "completed" or "failed" or "cancelled" || clock.Elapsed > MigrationTimeout)
            {
                sourceCpu = source.CpuTime - sourceCpu;
                destinationCpu = destination.CpuTime - destinationCpu;
                sourceVcpuCpu = source.VcpuCpuTime - sourceVcpuCpu;
                destinationVcpuCpu = destination.VcpuCpuTime - destinationVcpuCpu;
                if (status is not ("completed" or "failed" or "cancelled"))
                {
                    await source.Qmp.ExecuteAsync("migrate_cancel");
                }

                JsonNode? ram = info["ram"];
                JsonNode? latency = null;
                if (scenario.Postcopy && status == "completed")
                {
                    JsonObject incoming = await destination.QueryMigrateAsync();
                    for (int i = 0; i < 100 && incoming["status"]?.GetValue<string>() != "completed"; i++)
                    {
                        await Task.Delay(50);
                        incoming = await destination.QueryMigrateAsync();
                    }

                    latency = incoming["x-modular-fault-latency"]?.DeepClone();
                    if (latency is JsonObject figures)
                    {
                        figures["placement"] = incoming["x-modular-postcopy-placement"]?.DeepClone();
                        figures["run-after-package-ms"] = incoming["x-modular-run-after-package-ms"]?.DeepClone();
                    }
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
                    latency,
                    sourceCpu,
                    destinationCpu,
                    sourceVcpuCpu,
                    destinationVcpuCpu,
                    downtimeLimitMs);
            }

            await Task.Delay(20);
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
    private sealed class LogKeeper(string? directory, string name, ModularChild source, ModularChild destination) : IDisposable
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
