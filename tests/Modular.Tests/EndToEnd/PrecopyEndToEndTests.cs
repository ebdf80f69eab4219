using System.Text.Json.Nodes;
using Modular.Core.Verification;
using Modular.Tests.Support;

namespace Modular.Tests.EndToEnd;

/// <summary>
/// Two real <c>modular</c> processes, the KVM A/B guest with 256 MiB, migrated over tcp and unix,
/// and a file snapshot restored in a new process: the migration completes, the destination's RAM
/// passes the A/B check, and the guest keeps printing on the destination.
/// </summary>
[TestClass]
public sealed class PrecopyEndToEndTests
{
    private static readonly TimeSpan GuestTimeout = TimeSpan.FromSeconds(60);

    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    public async Task Tcp_MigrationCompletes_RamChecks_GuestContinuesOnDestination() => await MigrateAndCheckAsync("tcp");

    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    public async Task Unix_MigrationCompletes_RamChecks_GuestContinuesOnDestination() => await MigrateAndCheckAsync("unix");

    private static async Task MigrateAndCheckAsync(string scheme)
    {
        await using MigrationPair pair = await MigrationPair.StartAsync(scheme);
        StringAssert.StartsWith(pair.DestinationUri, scheme + ":");
        JsonObject result = await pair.MigrateToEndAsync();
        Assert.AreEqual("completed", result["status"]?.GetValue<string>(), result.ToJsonString());
        Assert.IsGreaterThan(0L, result["ram"]!["transferred"]!.GetValue<long>());
        Assert.AreEqual("postmigrate", await pair.Source.RunStateAsync());

        await AssertGuestContinuesAsync(pair.Destination);
        JsonObject incoming = await pair.Destination.QueryMigrateAsync();
        Assert.AreEqual("completed", incoming["status"]?.GetValue<string>(), incoming.ToJsonString());
    }

    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    public async Task FileSnapshot_RestoredInNewProcess_GuestContinues()
    {
        await using MigrationPair pair = MigrationPair.Create();
        await pair.StartSourceAsync();
        string snapshot = pair.PathFor("guest.snapshot");

        // Saved the way QEMU users save to a file (virsh save): paused first. A running A/B guest
        // dirties all of its RAM every pass, faster than a disk file takes it, so a live save never
        // converges (measured: 6 GB written in 2 minutes, still active).
        await pair.Source.Qmp.ExecuteAsync("stop");
        JsonObject result = await pair.MigrateToEndAsync("file:" + snapshot);
        Assert.AreEqual("completed", result["status"]?.GetValue<string>(), result.ToJsonString());
        Assert.AreEqual("postmigrate", await pair.Source.RunStateAsync());
        Assert.IsGreaterThan(1L << 20, new FileInfo(snapshot).Length);

        // The source stays in postmigrate; its RAM is what the snapshot holds.
        AbRamCheckResult sourceRam = await pair.Source.CheckRamAsync(pair.Directory);
        Assert.IsTrue(sourceRam.Passed, sourceRam.Message);

        await pair.StartDestinationAsync("file:" + snapshot);
        await AssertGuestContinuesAsync(pair.Destination);
    }

    /// <summary>After completion: the destination runs, its RAM passes the A/B check, and new 'B's appear.</summary>
    internal static async Task AssertGuestContinuesAsync(ModularProcess destination)
    {
        await WaitForRunStateAsync(destination, "running", GuestTimeout);
        AbRamCheckResult ram = await destination.CheckRamAsync(Path.GetDirectoryName(destination.SerialPath)!);
        Assert.IsTrue(ram.Passed, ram.Message);
        int before = destination.SerialCount('B');
        await destination.WaitForSerialAsync('B', before + 2, GuestTimeout);
        Assert.AreEqual("running", await destination.RunStateAsync());
        Assert.AreEqual(0, destination.SerialCount('A'), "the destination's guest never restarted from the beginning");
    }

    internal static async Task WaitForRunStateAsync(ModularProcess process, string state, TimeSpan timeout)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        string current;
        while ((current = await process.RunStateAsync()) != state)
        {
            if (clock.Elapsed > timeout)
            {
                Assert.Fail($"{process.Name} stayed in '{current}', expected '{state}'; stderr: {process.StdErr}");
            }

            await Task.Delay(100);
        }
    }
}
