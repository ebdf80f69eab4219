using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using Modular.Cli.Children;
using Modular.Core.Qmp;

namespace Modular.Cli.Bench;

/// <summary>The bench's recovery row: pause postcopy with migrate-pause, recover, and what each step took.</summary>
internal static partial class MigrationBench
{
    /// <summary>
    /// The recovery row: from migrate-pause on the source until both sides report postcopy-paused;
    /// from migrate (resume) until the source is postcopy-active again; what was sent before the
    /// pause and after the resume.
    /// </summary>
    private sealed record RecoveryFigures(double PauseMs, double ResumeMs, double BeforeBytes, double AfterBytes);

    /// <summary>
    /// The recovery row (QMP that QEMU and Modular share): migrate-pause on the source, both sides
    /// postcopy-paused, migrate-recover on the destination, migrate with resume on the source, until
    /// the source is postcopy-active again. AfterBytes holds the bytes sent at the resume, until the
    /// caller subtracts them from the final figure.
    /// </summary>
    private static async Task<RecoveryFigures?> PauseAndRecoverAsync(GuestChild source, GuestChild destination, string recoverUri, double sentBefore)
    {
        var clock = Stopwatch.StartNew();
        try
        {
            await source.Qmp.ExecuteAsync("migrate-pause");
        }
        catch (QmpErrorException)
        {
            if ((await source.QueryMigrateAsync())["status"]?.GetValue<string>() == "completed")
            {
                return null; // it ended between the poll and the pause: nothing to measure
            }

            throw;
        }

        await WaitForStatusAsync(source, "postcopy-paused");
        await WaitForStatusAsync(destination, "postcopy-paused");
        double pauseMs = clock.Elapsed.TotalMilliseconds;
        await destination.Qmp.ExecuteAsync("migrate-recover", new JsonObject { ["uri"] = recoverUri });
        clock.Restart();
        await source.Qmp.ExecuteAsync("migrate", new JsonObject { ["uri"] = recoverUri, ["resume"] = true });
        JsonObject resumed = await WaitForStatusAsync(source, "postcopy-active", "completed");
        return new RecoveryFigures(pauseMs, clock.Elapsed.TotalMilliseconds, sentBefore, Number(resumed["ram"]?["transferred"]));
    }

    private static async Task<JsonObject> WaitForStatusAsync(GuestChild child, params string[] wanted)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            JsonObject info = await child.QueryMigrateAsync();
            string status = info["status"]?.GetValue<string>() ?? "none";
            if (wanted.Contains(status))
            {
                return info;
            }

            if (status is "failed" or "cancelled" || clock.Elapsed > TimeSpan.FromSeconds(30))
            {
                throw new InvalidOperationException($"the recovery row waited for {string.Join(" or ", wanted)} and found {status}: {info.ToJsonString()}");
            }

            await Task.Delay(2);
        }
    }

    private static string RecoveryLine(Outcome outcome) => outcome.Recovery is not { } r
        ? $"    {outcome.Program}'s recovery: not measured (the migration was {outcome.Status} before it could be paused)"
        : string.Create(CultureInfo.InvariantCulture,
            $"    {outcome.Program}'s recovery: paused (migrate-pause to both sides postcopy-paused) in {r.PauseMs:F1} ms; resumed (migrate resume=true to postcopy-active) in {r.ResumeMs:F1} ms; {r.BeforeBytes / 1e6:F0} MB sent before the pause, {r.AfterBytes / 1e6:F0} MB after the resume");
}
