using System.Text.Json.Nodes;
using Modular.Cli.Migration;
using Modular.Core.Boot;
using Modular.Core.Config;
using Modular.Core.Qmp;
using Modular.Core.Verification;

namespace Modular.Cli.Demo;

/// <summary>The options of <c>modular demo</c>.</summary>
/// <param name="Memory">Guest RAM size.</param>
/// <param name="Transport">tcp or unix.</param>
/// <param name="Postcopy">Switch to postcopy right after the start.</param>
/// <param name="Synthetic">Use the synthetic accelerator (no guest code).</param>
internal sealed record DemoOptions(ulong Memory, string Transport, bool Postcopy, bool Synthetic);

/// <summary>
/// The main job on a built-in default: two <c>modular run</c> processes on this host, the A/B guest
/// running in the first, a live migration to the second, then proof: the guest keeps printing on the
/// destination and its RAM passes the A/B check.
/// </summary>
internal static class DemoRunner
{
    internal static async Task<int> RunAsync(DemoOptions options, TextWriter output, CancellationToken cancellationToken)
    {
        string kernel = Path.Combine(AppContext.BaseDirectory, "guests", "ab-guest.elf");
        string work = Directory.CreateTempSubdirectory("modular-demo-").FullName;
        string srcQmp = Path.Combine(work, "src.qmp"), dstQmp = Path.Combine(work, "dst.qmp");
        string srcSerial = Path.Combine(work, "src-serial.log"), dstSerial = Path.Combine(work, "dst-serial.log");
        string incoming = options.Transport == "unix" ? "unix:" + Path.Combine(work, "migration.sock") : "tcp:127.0.0.1:0";
        string memory = ByteSize.Format(options.Memory);
        string accel = options.Synthetic ? "synthetic" : "kvm";
        var common = new List<string> { "--kernel", kernel, "--memory", memory, "--set", "machine.accelerator=" + accel };
        if (options.Postcopy)
        {
            common.AddRange(["--set", "migration.capabilities.postcopy-ram=true"]);
        }

        await output.WriteLineAsync($"Modular demo: live migration of the A/B guest ({memory} RAM, {accel}) between two processes over {options.Transport}{(options.Postcopy ? ", postcopy" : ", precopy")}.");
        await output.WriteLineAsync($"  working directory: {work}");
        await using ChildMachine destination = ChildMachine.Start("destination", [.. common, "--incoming", incoming, "--qmp", dstQmp, "--serial", "file:" + dstSerial]);
        string uri = await destination.ListeningOn(TimeSpan.FromSeconds(30));
        await output.WriteLineAsync($"  destination: pid {destination.Process.Id}, waiting on {uri}");
        await using ChildMachine source = ChildMachine.Start("source", [.. common, "--qmp", srcQmp, "--serial", "file:" + srcSerial]);
        await output.WriteLineAsync($"  source:      pid {source.Process.Id}, booting {Path.GetFileName(kernel)}");

        await using QmpClient src = await ConnectAsync(srcQmp, source, cancellationToken);
        await using QmpClient dst = await ConnectAsync(dstQmp, destination, cancellationToken);
        if (!options.Synthetic)
        {
            string shown = await WaitForSerialAsync(srcSerial, text => text.Contains('B', StringComparison.Ordinal), TimeSpan.FromSeconds(60), cancellationToken);
            await output.WriteLineAsync($"  guest running on the source: serial shows \"{Tail(shown)}\"");
        }
        else
        {
            await Task.Delay(1000, cancellationToken);
        }

        JsonObject result = await MigrationMonitor.MigrateAsync(src, uri, options.Postcopy, output, cancellationToken);
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
        await TryQuitAsync(src);
        await TryQuitAsync(dst);
        TryDelete(work);
        await output.WriteLineAsync(ok ? "Demo finished: the guest moved while running and lost nothing." : "Demo finished with a problem (see above).");
        return ok ? 0 : 1;
    }

    private static async Task<QmpClient> ConnectAsync(string socket, ChildMachine machine, CancellationToken cancellationToken)
    {
        for (int attempt = 0; ; attempt++)
        {
            try
            {
                return await QmpClient.ConnectAsync(socket, cancellationToken);
            }
            catch (QmpConnectionException) when (attempt < 200 && !machine.Process.HasExited)
            {
                await Task.Delay(50, cancellationToken);
            }
            catch (QmpConnectionException ex)
            {
                throw new InvalidOperationException($"The {machine.Name} machine did not come up: {ex.Message} {machine.StdErr.Trim()}", ex);
            }
        }
    }

    private static async Task TryQuitAsync(QmpClient client)
    {
        try
        {
            await client.ExecuteAsync("quit");
        }
        catch (Exception ex) when (ex is QmpConnectionException or IOException or QmpErrorException)
        {
            // Already gone.
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
