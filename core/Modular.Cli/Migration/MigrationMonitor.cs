using System.Text.Json.Nodes;
using Modular.Core.Qmp;
using Spectre.Console;

namespace Modular.Cli.Migration;

/// <summary>What a <see cref="MigrationMonitor"/> saw while it followed a migration, beyond the final reply.</summary>
internal sealed class MigrationWatch
{
    private int _lastThrottle;

    /// <summary>The highest cpu-throttle-percentage query-migrate showed (auto-converge), 0 when none.</summary>
    public int HighestThrottle { get; private set; }

    /// <summary>Takes a query-migrate reply in; true when the throttle changed since the last one.</summary>
    internal bool See(JsonObject reply)
    {
        int throttle = Throttle(reply);
        bool changed = throttle != _lastThrottle;
        _lastThrottle = throttle;
        HighestThrottle = Math.Max(HighestThrottle, throttle);
        return changed;
    }

    /// <summary>cpu-throttle-percentage of <paramref name="reply"/>, 0 when absent.</summary>
    internal static int Throttle(JsonObject reply) => reply["cpu-throttle-percentage"]?.GetValue<int>() ?? 0;
}

/// <summary>Starts a migration over QMP and follows query-migrate until it ends, with a progress bar for people.</summary>
internal static class MigrationMonitor
{
    // postcopy-paused (x-modular-postcopy-recovery) ends the watch too: the operator acts next.
    private static readonly string[] FinalStates = ["completed", "failed", "cancelled", "postcopy-paused"];

    /// <summary>
    /// Runs migrate (optionally switching to postcopy, or resuming a paused postcopy migration) and
    /// returns the final query-migrate reply (completed, failed, cancelled, or postcopy-paused).
    /// </summary>
    internal static async Task<JsonObject> MigrateAsync(QmpClient source, string uri, bool postcopy, TextWriter output, CancellationToken cancellationToken, MigrationWatch? watch = null, bool resume = false)
    {
        watch ??= new MigrationWatch();
        var arguments = new JsonObject { ["uri"] = uri };
        if (resume)
        {
            arguments["resume"] = true;
            postcopy = false;
        }

        await source.ExecuteAsync("migrate", arguments, cancellationToken);
        if (resume)
        {
            // Until the migration task has taken the resume, query-migrate still says postcopy-paused.
            await WaitWhilePausedAsync(source, cancellationToken);
        }

        if (postcopy)
        {
            await source.ExecuteAsync("migrate-start-postcopy", null, cancellationToken);
        }

        if (!Console.IsOutputRedirected && ReferenceEquals(output, Console.Out))
        {
            JsonObject? last = null;
            await AnsiConsole.Progress()
                .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
                .StartAsync(async context =>
                {
                    ProgressTask task = context.AddTask($"migrate to {Markup.Escape(uri)}", maxValue: 100);
                    while (true)
                    {
                        last = await QueryAsync(source, cancellationToken);
                        _ = watch.See(last);
                        task.Value = Percent(last);
                        int throttle = MigrationWatch.Throttle(last);
                        task.Description = $"{Markup.Escape(uri)}: {Markup.Escape(Status(last))}{(throttle > 0 ? $", vCPUs throttled {throttle} %" : "")}";
                        if (FinalStates.Contains(Status(last)))
                        {
                            task.Value = 100;
                            return;
                        }

                        await Task.Delay(100, cancellationToken);
                    }
                });
            return last!;
        }

        string lastStatus = string.Empty;
        while (true)
        {
            JsonObject reply = await QueryAsync(source, cancellationToken);
            string status = Status(reply);
            bool throttleChanged = watch.See(reply);
            if (status != lastStatus)
            {
                await output.WriteLineAsync($"migration: {status}");
                lastStatus = status;
            }

            if (throttleChanged && !FinalStates.Contains(status))
            {
                await output.WriteLineAsync($"migration: vCPUs throttled to {MigrationWatch.Throttle(reply)} % (auto-converge)");
            }

            if (FinalStates.Contains(status))
            {
                return reply;
            }

            await Task.Delay(100, cancellationToken);
        }
    }

    /// <summary>Prints the final figures of a query-migrate reply.</summary>
    internal static void PrintSummary(JsonObject reply, TextWriter output, MigrationWatch? watch = null)
    {
        JsonObject? ram = reply["ram"] as JsonObject;
        long transferred = ram?["transferred"]?.GetValue<long>() ?? 0;
        long totalMs = reply["total-time"]?.GetValue<long>() ?? 0;
        output.WriteLine($"  status:       {Status(reply)}");
        output.WriteLine($"  total time:   {totalMs} ms");
        if (reply["downtime"] is JsonNode downtime)
        {
            output.WriteLine($"  downtime:     {downtime.GetValue<long>()} ms");
        }

        if (ram is not null)
        {
            double gbps = totalMs > 0 ? transferred / (totalMs / 1000.0) / 1e9 : 0;
            output.WriteLine($"  transferred:  {transferred / 1048576.0:F1} MiB ({gbps:F2} GB/s over the whole migration)");
            output.WriteLine($"  pages:        {ram["normal"]} normal, {ram["duplicate"]} zero, {ram["dirty-sync-count"]} dirty-bitmap syncs");
            if (ram["postcopy-requests"] is JsonNode requests && requests.GetValue<long>() > 0)
            {
                output.WriteLine($"  postcopy:     {requests} page requests");
            }
        }

        if (reply["xbzrle-cache"] is JsonObject xbzrle)
        {
            output.WriteLine($"  xbzrle:       {xbzrle["pages"]} pages sent as differences in {xbzrle["bytes"]} bytes, {xbzrle["cache-miss"]} cache misses, {xbzrle["overflow"]} overflows");
        }

        if (reply["cpu-throttle-percentage"] is not null)
        {
            output.WriteLine(watch is { HighestThrottle: > 0 } seen
                ? $"  auto-converge: vCPUs throttled up to {seen.HighestThrottle} % (now {MigrationWatch.Throttle(reply)} %)"
                : "  auto-converge: on, the vCPUs were never throttled");
        }

        if (reply["error-desc"] is JsonNode error)
        {
            output.WriteLine($"  error:        {error}");
        }

        if (reply["x-modular-postcopy-recoveries"] is JsonNode recoveries && recoveries.GetValue<int>() > 0)
        {
            output.WriteLine($"  recoveries:   {recoveries} (postcopy resumed after a failed connection)");
        }

        if (Status(reply) == "postcopy-paused")
        {
            output.WriteLine($"  paused:       {reply["x-modular-postcopy-pause-reason"]}");
            output.WriteLine("  next:         on the destination, modular migrate-recover --qmp SOCKET URI; then here, modular migrate --qmp SOCKET --resume URI");
        }
    }

    private static async Task WaitWhilePausedAsync(QmpClient source, CancellationToken cancellationToken)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (Status(await QueryAsync(source, cancellationToken)) == "postcopy-paused" && clock.Elapsed < TimeSpan.FromSeconds(5))
        {
            await Task.Delay(20, cancellationToken);
        }
    }

    internal static string Status(JsonObject reply) => reply["status"]?.GetValue<string>() ?? "none";

    private static async Task<JsonObject> QueryAsync(QmpClient client, CancellationToken cancellationToken) =>
        await client.ExecuteAsync("query-migrate", null, cancellationToken) as JsonObject ?? new JsonObject();

    private static double Percent(JsonObject reply)
    {
        if (reply["ram"] is not JsonObject ram)
        {
            return 0;
        }

        double total = ram["total"]?.GetValue<long>() ?? 0;
        double remaining = ram["remaining"]?.GetValue<long>() ?? 0;
        return total <= 0 ? 0 : Math.Clamp(100.0 * (total - remaining) / total, 0, 99.9);
    }
}
