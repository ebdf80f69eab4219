using System.CommandLine;
using Modular.Cli.Bench;
using Modular.Cli.Children;
using Modular.Core.Config;

namespace Modular.Cli.Commands;

/// <summary><c>modular bench [--memory 1G] [--transports tcp,unix] [--scenarios idle,dirtying,multifd,postcopy,tls,recovery] [--quick] [--set KEY=VALUE]... [--keep-logs DIR] [--postcopy-runs N] [--idle-runs N] [--qemu auto|off|PATH]</c>: the migration benchmark.</summary>
internal static class BenchCommand
{
    private static readonly Option<string?> MemoryOption = new("--memory") { Description = "Guest RAM of the migrated guests (default 1G; 256M with --quick)." };
    private static readonly Option<string?> TransportsOption = new("--transports") { Description = "Comma-separated transports to migrate over (default tcp,unix)." };
    private static readonly Option<string?> ScenariosOption = new("--scenarios") { Description = "Comma-separated migration rows to run: idle, dirtying, multifd (the idle guest with the multifd capability), postcopy, tls (the idle guest with every channel in TLS), recovery (postcopy paused with migrate-pause after an eighth of RAM and recovered; the same QMP runs QEMU's recovery) (default all)." };
    private static readonly Option<bool> QuickOption = new("--quick") { Description = "A short run: 256 MiB guests, 512 MiB through the plain sockets." };
    private static readonly Option<string[]> SetOption = new("--set") { Description = "A config override KEY=VALUE for every migrated guest's process, both sides (repeatable), e.g. machine.memory-backend=anonymous.", AllowMultipleArgumentsPerToken = false, Arity = ArgumentArity.ZeroOrMore };
    private static readonly Option<string?> KeepLogsOption = new("--keep-logs") { Description = "Keep each process's Debug log in this directory (created if missing)." };
    private static readonly Option<int?> PostcopyRunsOption = new("--postcopy-runs") { Description = $"How many times the postcopy row runs, its page requests pooled for the targets (default 5; 2 with --quick; 1 to 50). With 1 GiB guests it runs on, up to {BenchTargets.MaxRunsFactor} times as often, while the pool holds fewer than the {BenchTargets.RequestsForP99} requests a steady p99 needs." };
    private static readonly Option<int?> IdleRunsOption = new("--idle-runs") { Description = "How many times each idle row (plain and multifd) runs, each against a plain socket measured just before it; the targets read the runs' median (default 5; 1 with --quick; 1 to 50)." };
    private static readonly Option<string> QemuOption = new("--qemu") { Description = "Run each row again between two QEMUs for comparison: auto (qemu-system-x86_64 from PATH, if there and /dev/kvm exists), off, or the path of a qemu-system-x86_64.", DefaultValueFactory = _ => "auto" };

    internal static Command Create()
    {
        var command = new Command("bench", "Measure precopy migration (an idle filled guest and a dirtying A/B guest, two processes) over tcp and unix beside a plain socket's throughput.");
        command.Options.Add(MemoryOption);
        command.Options.Add(TransportsOption);
        command.Options.Add(ScenariosOption);
        command.Options.Add(QuickOption);
        command.Options.Add(SetOption);
        command.Options.Add(KeepLogsOption);
        command.Options.Add(PostcopyRunsOption);
        command.Options.Add(IdleRunsOption);
        command.Options.Add(QemuOption);
        command.SetAction(async (parse, _) =>
        {
            BenchOptions options = parse.GetValue(QuickOption) ? BenchOptions.Quick : BenchOptions.Default;
            string? memory = parse.GetValue(MemoryOption);
            if (memory is not null)
            {
                if (!ByteSize.TryParse(memory, out ulong bytes) || bytes <= 1UL << 20)
                {
                    await Console.Error.WriteLineAsync($"--memory '{memory}': expected a size above 1M such as 256M or 1G.");
                    return ExitCodes.Usage;
                }

                options = options with { MemoryBytes = bytes };
            }

            string? transports = parse.GetValue(TransportsOption);
            if (transports is not null)
            {
                string[] list = transports.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
                string? unknown = list.FirstOrDefault(t => t is not ("tcp" or "unix"));
                if (list.Length == 0 || unknown is not null)
                {
                    await Console.Error.WriteLineAsync($"--transports '{transports}': the benchmark measures tcp and unix; give one or both, comma-separated.");
                    return ExitCodes.Usage;
                }

                options = options with { Transports = list };
            }

            string? scenarios = parse.GetValue(ScenariosOption);
            if (scenarios is not null)
            {
                string[] list = scenarios.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
                string? unknown = list.FirstOrDefault(s => !BenchOptions.AllScenarios.Contains(s));
                if (list.Length == 0 || unknown is not null)
                {
                    await Console.Error.WriteLineAsync($"--scenarios '{scenarios}': the benchmark has the rows {string.Join(", ", BenchOptions.AllScenarios)}; give one or more, comma-separated.");
                    return ExitCodes.Usage;
                }

                options = options with { Scenarios = list };
            }

            if (parse.GetValue(PostcopyRunsOption) is { } runs)
            {
                if (runs is < 1 or > 50)
                {
                    await Console.Error.WriteLineAsync($"--postcopy-runs {runs}: give 1 to 50 runs.");
                    return ExitCodes.Usage;
                }

                options = options with { PostcopyRuns = runs };
            }

            if (parse.GetValue(IdleRunsOption) is { } idleRuns)
            {
                if (idleRuns is < 1 or > 50)
                {
                    await Console.Error.WriteLineAsync($"--idle-runs {idleRuns}: give 1 to 50 runs.");
                    return ExitCodes.Usage;
                }

                options = options with { IdleRuns = idleRuns };
            }

            string[] settings = parse.GetValue(SetOption) ?? [];
            string? malformed = settings.FirstOrDefault(s => s.IndexOf('=', StringComparison.Ordinal) <= 0);
            if (malformed is not null)
            {
                await Console.Error.WriteLineAsync($"--set '{malformed}': expected KEY=VALUE, a config key as `modular config keys` lists them, e.g. machine.memory-backend=anonymous.");
                return ExitCodes.Usage;
            }

            string? logs = parse.GetValue(KeepLogsOption);
            if (logs is not null)
            {
                try
                {
                    logs = Directory.CreateDirectory(logs).FullName;
                }
                catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or ArgumentException)
                {
                    await Console.Error.WriteLineAsync($"--keep-logs '{logs}': cannot create that directory: {ex.Message}");
                    return ExitCodes.Usage;
                }
            }

            (string? qemu, string qemuNote, string? qemuError) = ResolveQemu(parse.GetValue(QemuOption) ?? "auto");
            if (qemuError is not null)
            {
                await Console.Error.WriteLineAsync(qemuError);
                return ExitCodes.Usage;
            }

            options = options with { Settings = settings, LogDirectory = logs, QemuPath = qemu, QemuNote = qemuNote };
            return await MigrationBench.RunAsync(options, Console.Out);
        });
        return command;
    }

    /// <summary>
    /// <c>--qemu</c>: auto finds QEMU on PATH (none is fine: the note says why), off runs none, and
    /// a path must be an existing file (else the error names it).
    /// </summary>
    internal static (string? Path, string Note, string? Error) ResolveQemu(string value)
    {
        switch (value)
        {
            case "off":
                return (null, "--qemu off", null);
            case "auto":
                string? found = QemuChild.Find(out string? whyNot);
                return (found, whyNot ?? "", null);
            default:
                return File.Exists(value)
                    ? (Path.GetFullPath(value), "", null)
                    : (null, "", $"--qemu '{value}': no such file; give auto, off, or the path of a qemu-system-x86_64.");
        }
    }
}
