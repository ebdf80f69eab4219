using System.Text.Json.Nodes;
using Modular.Cli.Children;

namespace Modular.Tests.Support;

/// <summary>
/// A migration stream written by a real QEMU (Debian's qemu-system-x86, 7.2 here): the A/B guest
/// stopped, then <c>migrate exec:cat &gt; FILE</c>, so every page goes out once. Made once per test
/// run; tests that need it report Inconclusive where QEMU is missing.
/// </summary>
internal static class QemuSnapshot
{
    /// <summary>The guest's RAM.</summary>
    public const ulong Memory = 64UL << 20;

    private static readonly SemaphoreSlim Gate = new(1, 1);
    private static Snapshot? s_snapshot;

    /// <summary>The stream's file, and QEMU's own query-migrate counts for it.</summary>
    /// <param name="Path">The stream, in a file kept for the test run.</param>
    /// <param name="NormalPages">QEMU's ram.normal: pages sent whole.</param>
    /// <param name="DuplicatePages">QEMU's ram.duplicate: zero pages.</param>
    /// <param name="Version">QEMU's version, from its QMP greeting.</param>
    public sealed record Snapshot(string Path, long NormalPages, long DuplicatePages, string Version);

    /// <summary>The snapshot, made on first use.</summary>
    public static async Task<Snapshot> GetAsync()
    {
        string qemu = QemuChild.Find(out string? whyNot) ?? throw new AssertInconclusiveException($"No QEMU to write a stream: {whyNot}.");
        await Gate.WaitAsync();
        try
        {
            return s_snapshot ??= await MakeAsync(qemu);
        }
        finally
        {
            Gate.Release();
        }
    }

    private static async Task<Snapshot> MakeAsync(string qemu)
    {
        string directory = Directory.CreateTempSubdirectory("modular-qemu-stream-").FullName;
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            try
            {
                Directory.Delete(directory, recursive: true);
            }
            catch (IOException)
            {
                // Already gone; nothing to keep the test host's exit from finishing.
            }
        };
        string path = System.IO.Path.Combine(directory, "qemu.mig");
        await using QemuChild child = await QemuChild.StartAsync(qemu, directory, "q", "ab-guest.elf", Memory, incomingDefer: false);
        await child.WaitForSerialAsync('A', TimeSpan.FromMinutes(2));
        await child.Qmp.ExecuteAsync("stop");
        await child.Qmp.ExecuteAsync("migrate", new JsonObject { ["uri"] = $"exec:cat > {path}" });
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (true)
        {
            JsonObject info = await child.QueryMigrateAsync();
            string status = info["status"]?.GetValue<string>() ?? "none";
            if (status == "completed")
            {
                return new Snapshot(path, info["ram"]!["normal"]!.GetValue<long>(), info["ram"]!["duplicate"]!.GetValue<long>(), child.Version);
            }

            if (status is "failed" or "cancelled" || clock.Elapsed > TimeSpan.FromMinutes(2))
            {
                throw new InvalidOperationException($"QEMU's migration to {path} ended {status}: {info.ToJsonString()}");
            }

            await Task.Delay(50);
        }
    }
}
