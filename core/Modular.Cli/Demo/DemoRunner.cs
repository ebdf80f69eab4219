using System.Text.Json.Nodes;
using Modular.Cli.Children;
using Modular.Cli.Migration;
using Modular.Core.Boot;
using Modular.Core.Config;
using Modular.Core.Migration.Tls;
using Modular.Core.Qmp;
using Modular.Core.Verification;

namespace Modular.Cli.Demo;

/// <summary>The options of <c>modular demo</c>.</summary>
/// <param name="Memory">Guest RAM size.</param>
/// <param name="Transport">tcp or unix.</param>
/// <param name="Postcopy">Switch to postcopy right after the start.</param>
/// <param name="Multifd">Both sides set the multifd capability (precopy only).</param>
/// <param name="Synthetic">Use the synthetic accelerator (no guest code).</param>
/// <param name="Tls">Every channel in TLS.</param>
/// <param name="Recovery">With postcopy: pause mid-postcopy (migrate-pause) and recover (x-modular-postcopy-recovery).</param>
internal sealed record DemoOptions(ulong Memory, string Transport, bool Postcopy, bool Synthetic, bool Multifd = false, bool Tls = false, bool Recovery = false);

/// <summary>
/// The main job on a built-in default: two <c>modular run</c> processes on this host, the A/B guest
/// running in the first, a live migration to the second, then proof: the guest keeps printing on the
/// destination and its RAM passes the A/B check.
/// </summary>
internal static class DemoRunner
{
    private const string Kernel = "ab-guest.elf";

    internal static async Task<int> RunAsync(DemoOptions options, TextWriter output, CancellationToken cancellationToken)
    {
        string work = Directory.CreateTempSubdirectory("modular-demo-").FullName;
        try
        {
            return await RunInAsync(options, work, output, cancellationToken);
        }
        finally
        {
            // After the children are disposed (quit), so nothing of theirs is left behind.
            TryDelete(work);
        }
    }

    private static async Task<int> RunInAsync(DemoOptions options, string work, TextWriter output, CancellationToken cancellationToken)
    {
        string incoming = options.Transport == "unix" ? "unix:" + Path.Combine(work, "migration.sock") : "tcp:127.0.0.1:0";
        string accel = options.Synthetic ? "synthetic" : "kvm";
        var extra = new List<string> { "--set", "machine.accelerator=" + accel };
        if (options.Postcopy)
        {
            extra.AddRange(["--set", "migration.capabilities.postcopy-ram=true", "--set", "migration.capabilities.postcopy-preempt=true"]);
        }

        if (options.Multifd)
        {
            extra.AddRange(["--set", "migration.capabilities.multifd=true"]);
        }

        if (options.Recovery)
        {
            extra.AddRange(["--set", "migration.capabilities.x-modular-postcopy-recovery=true"]);
        }

        List<string> destinationExtra = [.. extra], sourceExtra = [.. extra];
        if (options.Tls)
        {
            // QEMU's setup: a tls-creds-x509 object on each side (server on the destination, client on
            // the source) and the tls-creds parameter naming it; here from a private CA made for the demo.
            string pki = Path.Combine(work, "pki");
            TlsCredentialsWriter.Write(pki, ["localhost", "127.0.0.1"], TimeSpan.FromDays(1));
            foreach ((List<string> side, string endpoint) in new[] { (destinationExtra, "server"), (sourceExtra, "client") })
            {
                side.AddRange([
                    "--set", "objects[0].qom-type=" + TlsCredentials.QomType, "--set", "objects[0].id=tls0", "--set", "objects[0].dir=" + pki,
                    "--set", "objects[0].endpoint=" + endpoint, "--set", "migration.parameters.tls-creds=tls0",
                ]);
            }

            // A unix URI names no host to check the destination's certificate against.
            sourceExtra.AddRange(["--set", "migration.parameters.tls-hostname=localhost"]);
        }

        await output.WriteLineAsync($"Modular demo: live migration of the A/B guest ({ByteSize.Format(options.Memory)} RAM, {accel}) between two processes over {options.Transport}{(options.Tls ? " in TLS" : string.Empty)}{(options.Postcopy ? options.Recovery ? ", postcopy, paused and recovered on the way" : ", postcopy" : options.Multifd ? ", precopy with multifd" : ", precopy")}.");
        await output.WriteLineAsync($"  working directory: {work}");
        if (options.Tls)
        {
            await output.WriteLineAsync($"  TLS: every channel, with a private CA and certificates written to {Path.Combine(work, "pki")} (docs/tls.md)");
        }

        await using ModularChild destination = await ModularChild.StartAsync(work, "dst", Kernel, options.Memory, incoming, destinationExtra);
        string uri = await destination.WaitForStdErrAsync("modular: listening for an incoming migration on ", TimeSpan.FromSeconds(30));
        await output.WriteLineAsync($"  destination: pid {destination.ProcessId}, waiting on {uri}");
        await using ModularChild source = await ModularChild.StartAsync(work, "src", Kernel, options.Memory, incoming: null, sourceExtra);
        await output.WriteLineAsync($"  source:      pid {source.ProcessId}, booting {Kernel}");
        QmpClient src = source.Qmp, dst = destination.Qmp;
        string srcSerial = source.SerialPath, dstSerial = destination.SerialPath;
        if (!options.Synthetic)
        {
            string shown = await WaitForSerialAsync(srcSerial, text => text.Contains('B', StringComparison.Ordinal), TimeSpan.FromSeconds(60), cancellationToken);
            await output.WriteLineAsync($"  guest running on the source: serial shows \"{Tail(shown)}\"");
        }
        else
        {
            await Task.Delay(1000, cancellationToken);
        }

        JsonObject result = options.Recovery
            ? await MigrateWithRecoveryAsync(src, dst, uri, options, work, output, cancellationToken)
            : await MigrationMonitor.MigrateAsync(src, uri, options.Postcopy, output, cancellationToken);
        await output.WriteLineAsync("Migration:");
        MigrationMonitor.PrintSummary(result, output);
        if (MigrationMonitor.Status(result) != "completed")
        {
            await output.WriteLineAsync("The migration did not complete; the guest is still on the source.");
            return 1;
        }

        bool ok = true;
        if (!options.Synthetic)
        {
            int before = CountB(await ReadSharedAsync(dstSerial));
            string after = await WaitForSerialAsync(dstSerial, text => CountB(text) > before, TimeSpan.FromSeconds(30), cancellationToken);
            bool printing = CountB(after) > before;
            ok &= printing;
            await output.WriteLineAsync($"  guest on the destination: {(printing ? "still running" : "NOT printing")}, serial now shows \"{Tail(after)}\"");
        }

        string status = (await dst.ExecuteAsync("query-status", null, cancellationToken))?["status"]?.GetValue<string>() ?? "?";
        await dst.ExecuteAsync("stop", null, cancellationToken);
        string dump = Path.Combine(work, "dst-ram.bin");
        await dst.ExecuteAsync("pmemsave", new JsonObject { ["val"] = 0, ["size"] = (long)options.Memory, ["filename"] = dump }, cancellationToken);
        AbRamCheckResult check;
        using (var ram = new DumpFileMemory(dump))
        {
            check = AbRamCheck.Check(ram, PcRamLayout.For(options.Memory));
        }

        File.Delete(dump);
        ok &= check.Passed;
        await output.WriteLineAsync($"  destination run state before the check: {status}");
        await output.WriteLineAsync($"  RAM check on the destination: {(check.Passed ? "passed" : "FAILED")}: {check.Message}");
        await dst.ExecuteAsync("cont", null, cancellationToken);
        await output.WriteLineAsync(ok ? "Demo finished: the guest moved while running and lost nothing." : "Demo finished with a problem (see above).");
        return ok ? 0 : 1;
    }

    /// <summary>
    /// --recovery: postcopy at a capped background rate, paused mid-way with migrate-pause on the
    /// source (the connection ends as if the link failed), then migrate-recover on the destination
    /// and migrate with resume=true on the source. Returns the source's final query-migrate.
    /// </summary>
    private static async Task<JsonObject> MigrateWithRecoveryAsync(QmpClient src, QmpClient dst, string uri, DemoOptions options, string work, TextWriter output, CancellationToken cancellationToken)
    {
        // A cap on the background pages leaves a few seconds of postcopy to pause in.
        await src.ExecuteAsync("migrate-set-parameters", new JsonObject { ["max-postcopy-bandwidth"] = 64L << 20 }, cancellationToken);
        await src.ExecuteAsync("migrate", new JsonObject { ["uri"] = uri }, cancellationToken);
        await src.ExecuteAsync("migrate-start-postcopy", null, cancellationToken);
        long quarter = (long)options.Memory / 4;
        JsonObject running = await PollAsync(src, r => MigrationMonitor.Status(r) is "completed" or "failed" || (MigrationMonitor.Status(r) == "postcopy-active" && (r["ram"]?["transferred"]?.GetValue<long>() ?? 0) > quarter), cancellationToken);
        if (MigrationMonitor.Status(running) != "postcopy-active")
        {
            return running;
        }

        await output.WriteLineAsync($"  postcopy running: the guest runs on the destination, {(running["ram"]!["transferred"]!.GetValue<long>() >> 20)} MiB sent; migrate-pause on the source now");
        await src.ExecuteAsync("migrate-pause", null, cancellationToken);
        JsonObject paused = await PollAsync(src, r => MigrationMonitor.Status(r) is "postcopy-paused" or "completed" or "failed", cancellationToken);
        JsonObject pausedThere = await PollAsync(dst, r => MigrationMonitor.Status(r) is "postcopy-paused" or "completed" or "failed", cancellationToken);
        await output.WriteLineAsync($"  source {MigrationMonitor.Status(paused)} ({paused["x-modular-postcopy-pause-reason"]}), destination {MigrationMonitor.Status(pausedThere)} ({pausedThere["x-modular-postcopy-pause-reason"]})");
        if (MigrationMonitor.Status(paused) != "postcopy-paused")
        {
            return paused;
        }

        string recover = options.Transport == "unix" ? "unix:" + Path.Combine(work, "recover.sock") : $"tcp:127.0.0.1:{LoopbackPort.Free()}";
        await dst.ExecuteAsync("migrate-recover", new JsonObject { ["uri"] = recover }, cancellationToken);
        await output.WriteLineAsync($"  destination: migrate-recover {recover}; source: migrate {recover} resume=true");
        return await MigrationMonitor.MigrateAsync(src, recover, postcopy: false, output, cancellationToken, resume: true);
    }

    private static async Task<JsonObject> PollAsync(QmpClient qmp, Func<JsonObject, bool> done, CancellationToken cancellationToken)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (true)
        {
            var reply = (JsonObject)(await qmp.ExecuteAsync("query-migrate", null, cancellationToken))!;
            if (done(reply))
            {
                return reply;
            }

            if (clock.Elapsed > TimeSpan.FromSeconds(60))
            {
                throw new TimeoutException("the migration did not reach the expected state within 60 s: " + reply.ToJsonString());
            }

            await Task.Delay(20, cancellationToken);
        }
    }


    private static async Task<string> WaitForSerialAsync(string path, Func<string, bool> done, TimeSpan timeout, CancellationToken cancellationToken)
    {
        DateTime until = DateTime.UtcNow + timeout;
        string text = string.Empty;
        while (DateTime.UtcNow < until)
        {
            text = await ReadSharedAsync(path);
            if (done(text))
            {
                return text;
            }

            await Task.Delay(100, cancellationToken);
        }

        return text;
    }

    private static async Task<string> ReadSharedAsync(string path)
    {
        if (!File.Exists(path))
        {
            return string.Empty;
        }

        await using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        using var reader = new StreamReader(stream);
        return await reader.ReadToEndAsync();
    }

    private static void TryDelete(string directory)
    {
        try
        {
            Directory.Delete(directory, recursive: true);
        }
        catch (IOException)
        {
            // Left for inspection.
        }
    }

    private static int CountB(string text) => text.Count(c => c == 'B');

    private static string Tail(string text)
    {
        string flat = text.Replace("\n", string.Empty, StringComparison.Ordinal).Replace("\r", string.Empty, StringComparison.Ordinal);
        return flat.Length <= 24 ? flat : "..." + flat[^24..];
    }

}
