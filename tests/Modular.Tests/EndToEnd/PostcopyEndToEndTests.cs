using System.Text.Json.Nodes;
using Modular.Core.Qmp;
using Modular.Core.Verification;

namespace Modular.Tests.EndToEnd;

/// <summary>
/// Postcopy between two real <c>modular run</c> processes with the KVM A/B guest (256 MiB), over tcp
/// and unix: right after the start, and after two precopy passes. Each must complete, leave RAM the
/// A/B check accepts on the destination, keep the guest printing there, and (when the guest ran on
/// the destination while pages were missing) count page requests.
/// </summary>
[TestClass]
public sealed class PostcopyEndToEndTests
{
    internal const ulong Memory = 256UL << 20;

    public TestContext TestContext { get; set; } = null!;

    [TestMethod]
    public Task Tcp_PostcopyRightAfterStart() => RunAsync(TestContext, "tcp:127.0.0.1:0", precopyPasses: 0);

    [TestMethod]
    public Task Unix_PostcopyRightAfterStart() => RunAsync(TestContext, "unix:" + Path.Combine(Path.GetTempPath(), "modular-pc-" + Guid.NewGuid().ToString("N")[..8] + ".sock"), precopyPasses: 0);

    [TestMethod]
    public Task Tcp_PostcopyAfterTwoPrecopyPasses() => RunAsync(TestContext, "tcp:127.0.0.1:0", precopyPasses: 2);

    [TestMethod]
    public Task Unix_PostcopyAfterTwoPrecopyPasses() => RunAsync(TestContext, "unix:" + Path.Combine(Path.GetTempPath(), "modular-pc-" + Guid.NewGuid().ToString("N")[..8] + ".sock"), precopyPasses: 2);

    [TestMethod]
    public Task Tcp_PostcopyWithPreemptChannelRightAfterStart() => RunAsync(TestContext, "tcp:127.0.0.1:0", precopyPasses: 0, preempt: true);

    [TestMethod]
    public Task Unix_PostcopyWithPreemptChannelAfterTwoPrecopyPasses() => RunAsync(TestContext, "unix:" + Path.Combine(Path.GetTempPath(), "modular-pc-" + Guid.NewGuid().ToString("N")[..8] + ".sock"), precopyPasses: 2, preempt: true);

    [TestMethod]
    public Task Tcp_PostcopyRightAfterStart_IntoPrivateMemory() =>
        // Destinations default to shared memory (pages mapped with UFFDIO_CONTINUE); this one places copies (UFFDIO_COPY).
        RunAsync(TestContext, "tcp:127.0.0.1:0", precopyPasses: 0, extraArgs: ["--set", "machine.memory-backend=anonymous"]);

    [TestMethod]
    public Task Unix_GuestBootedOnSharedMemory_PostcopyAfterTwoPrecopyPasses() =>
        // The source's guest runs on a memfd too: KVM's dirty log over shared memory drives the passes and the discards.
        RunAsync(TestContext, "unix:" + Path.Combine(Path.GetTempPath(), "modular-pc-" + Guid.NewGuid().ToString("N")[..8] + ".sock"), precopyPasses: 2, extraArgs: ["--set", "machine.memory-backend=memfd"]);

    /// <summary>Whether this host's userfaultfd (the plugin from disk) can map shared memory with minor faults.</summary>
    private static bool MinorFaultsOnSharedMemory()
    {
        using var catalog = Modular.Core.Plugins.PluginCatalog.Load([Modular.Core.Plugins.PluginCatalog.DefaultDirectory]);
        using Modular.Abstractions.Faults.IFaultBackend backend = catalog.GetFaultBackend("userfaultfd").Open();
        return backend is Modular.Abstractions.Faults.ISharedRamFaultBackend { SharedRamUnavailableReason: null };
    }

    /// <summary>The scenario: postcopy after <paramref name="precopyPasses"/> precopy passes; <paramref name="extraArgs"/> go to both processes (e.g. huge pages); <paramref name="preempt"/> sets postcopy-preempt on the source.</summary>
    internal static async Task RunAsync(TestContext testContext, string listenUri, int precopyPasses, IReadOnlyList<string>? extraArgs = null, bool preempt = false)
    {
        await using PostcopyPair pair = await PostcopyPair.StartAsync(listenUri, extraArgs: extraArgs);
        await pair.SetCapabilitiesAsync("events", "postcopy-ram", "postcopy-blocktime");
        if (preempt)
        {
            // The source's capability alone: the destination follows the source's announcement.
            await pair.SourceQmp.ExecuteAsync("migrate-set-capabilities", new JsonObject
            {
                ["capabilities"] = new JsonArray { new JsonObject { ["capability"] = "postcopy-preempt", ["state"] = true } },
            });
        }

        // Precopy must not converge on its own before migrate-start-postcopy. Nor may a pass drain
        // RAM: a sync that finds nothing dirty completes as precopy (QEMU does the same), which a
        // guest starved of CPU by a loaded host allows (seen once in a full test run). So passes
        // are slowed to about 1.3 s, in which even a starved guest dirties pages.
        await pair.SourceQmp.ExecuteAsync("migrate-set-parameters", new JsonObject { ["downtime-limit"] = 1 });
        if (precopyPasses > 0)
        {
            await pair.SourceQmp.ExecuteAsync("migrate-set-parameters", new JsonObject { ["max-bandwidth"] = 200_000_000 });
        }

        // Let the guest finish its first pass (it prints A) so it dirties memory all the time. For
        // postcopy at once, start halfway through one of its passes (see WaitUntilMidPassAsync).
        if (precopyPasses == 0)
        {
            await WaitUntilMidPassAsync(pair.SourceSerial, TimeSpan.FromSeconds(60));
        }
        else
        {
            await WaitForSerialAsync(pair.SourceSerial, 'A', TimeSpan.FromSeconds(30));
        }

        await pair.SourceQmp.ExecuteAsync("migrate", new JsonObject { ["uri"] = pair.IncomingUri });
        if (precopyPasses > 0)
        {
            await PostcopyPair.WaitForAsync(pair.SourceQmp, r => (r["ram"]?["dirty-sync-count"]?.GetValue<long>() ?? 0) >= precopyPasses || PostcopyPair.Status(r) != "active" && PostcopyPair.Status(r) != "setup", TimeSpan.FromSeconds(60), $"{precopyPasses} precopy passes");
        }

        await pair.SourceQmp.ExecuteAsync("migrate-start-postcopy");
        JsonObject source = await PostcopyPair.WaitForAsync(pair.SourceQmp, r => PostcopyPair.Status(r) is "completed" or "failed", TimeSpan.FromSeconds(90), "the source to finish");
        Assert.AreEqual("completed", PostcopyPair.Status(source), "source: " + source.ToJsonString() + "\n" + pair.SourceStderr + pair.DestinationStderr);
        JsonObject destination = await PostcopyPair.WaitForAsync(pair.DestinationQmp, r => PostcopyPair.Status(r) is "completed" or "failed", TimeSpan.FromSeconds(30), "the destination to finish");
        Assert.AreEqual("completed", PostcopyPair.Status(destination), "destination: " + destination.ToJsonString());
        testContext.WriteLine("source: " + source.ToJsonString());
        testContext.WriteLine("destination: " + destination.ToJsonString());

        // Where the downtime went: the switch's four parts add up to it (downtime is whole ms, cut).
        JsonNode parts = source["x-modular-postcopy-switch"] ?? throw new AssertFailedException("the source reports its switch: " + source.ToJsonString());
        double sum = new[] { "stop-vcpus-ms", "sync-discards-ms", "package-ms", "send-ms" }.Sum(name => parts[name]!.GetValue<double>());
        double downtime = source["downtime"]!.GetValue<long>();
        Assert.IsTrue(sum >= downtime - 0.3 && sum < downtime + 1.3, $"the switch's parts ({sum:F1} ms) make the downtime ({downtime} ms): {parts.ToJsonString()}");

        // The PING that follows the package (QEMU 7.2's ping 4) was answered by the destination's
        // listen thread, and the source's return-path reader took the PONG (which, with
        // postcopy-preempt, also sends an empty batch on channel 1; a failure there fails the migration).
        double pong = parts["pong-after-package-ms"]?.GetValue<double>() ?? throw new AssertFailedException("the source reports when the destination answered the PING after the package: " + parts.ToJsonString());
        Assert.IsTrue(pong is >= 0 and < 30_000, $"PONG 4 came {pong} ms after the package");

        // The source keeps the stopped guest (postmigrate); the destination runs it.
        Assert.AreEqual("postmigrate", (await pair.SourceQmp.ExecuteAsync("query-status"))!["status"]!.ToString());
        Assert.AreEqual("running", (await pair.DestinationQmp.ExecuteAsync("query-status"))!["status"]!.ToString());
        // Throws when no MIGRATION event said postcopy-active (already received ones count). Only the
        // source: the destination took its events setting when it started listening (--incoming).
        await pair.SourceQmp.WaitForEventAsync(e => e.Name == "MIGRATION" && e.Data?["status"]?.ToString() == "postcopy-active", "MIGRATION postcopy-active", TimeSpan.FromSeconds(5));

        Assert.IsNotNull(destination["postcopy-blocktime"], "postcopy-blocktime is on: " + destination.ToJsonString());
        bool privateMemory = extraArgs?.Contains("machine.memory-backend=anonymous") == true || extraArgs?.Contains("machine.hugepages=true") == true;
        Assert.AreEqual(privateMemory || !MinorFaultsOnSharedMemory() ? "copy" : "map", destination["x-modular-postcopy-placement"]?.GetValue<string>(), "a destination maps pages of shared memory (where the kernel can) and copies into private or huge-page memory: " + destination.ToJsonString());
        double runAfterPackage = destination["x-modular-run-after-package-ms"]?.GetValue<double>() ?? -1;
        Assert.IsTrue(runAfterPackage is >= 0 and < 5000, "the destination says how long after the package its vCPUs started: " + destination.ToJsonString());
        double ranAfterPackage = destination["x-modular-vcpus-ran-after-package-ms"]?.GetValue<double>() ?? -1;
        Assert.IsTrue(ranAfterPackage >= runAfterPackage && ranAfterPackage < 5000, "the destination says when its vCPU threads ran again, no earlier than RUN woke them: " + destination.ToJsonString());
        long requests = source["ram"]!["postcopy-requests"]!.GetValue<long>();
        if (precopyPasses == 0)
        {
            // Right after the start nearly all RAM is still on the source, and the running A/B guest
            // touches every page: it must fault. After precopy passes only recently dirtied pages are
            // missing, and the background stream may well win the race, so no count is required.
            Assert.IsGreaterThan(0L, requests, "postcopy of a running A/B guest must fault on pages not sent yet: " + source.ToJsonString());
            Assert.IsGreaterThan(0L, destination["x-modular-fault-latency"]!["count"]!.GetValue<long>(), destination.ToJsonString());
        }

        long preemptPages = source["ram"]!["x-modular-preempt-pages"]!.GetValue<long>();
        if (preempt)
        {
            // Every requested page travels on the preempt channel (and again in the background).
            Assert.IsGreaterThanOrEqualTo(requests, preemptPages, "with postcopy-preempt each request is answered on channel 1: " + source.ToJsonString());
        }
        else
        {
            Assert.AreEqual(0L, preemptPages, "without postcopy-preempt nothing goes on an extra channel: " + source.ToJsonString());
        }

        // The guest keeps printing B on the destination.
        long before = new FileInfo(pair.DestinationSerial).Length;
        await WaitForSerialGrowthAsync(pair.DestinationSerial, before, TimeSpan.FromSeconds(30));
        StringAssert.Contains(File.ReadAllText(pair.DestinationSerial), "B");

        AbRamCheckResult check = await pair.CheckDestinationRamAsync(Memory);
        Assert.IsTrue(check.Passed, check.Message);
    }

    internal static async Task WaitForSerialAsync(string path, char wanted, TimeSpan timeout)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (!(File.Exists(path) && File.ReadAllText(path).Contains(wanted, StringComparison.Ordinal)))
        {
            Assert.IsTrue(clock.Elapsed < timeout, $"The guest never printed '{wanted}' to {path}.");
            await Task.Delay(50);
        }
    }

    /// <summary>
    /// Returns when the A/B guest is about halfway through a pass over its RAM. Postcopy started
    /// then must fault: the guest's next pages lie far above what the migration sends first (the
    /// precopy scan from the bottom, for the few milliseconds before the switch). Started just after
    /// 'A', the guest's cursor is at the bottom too, and the background scan (about 1 GB/s) can stay
    /// ahead of the guest (0.3-0.8 GB/s) until every page is there: then no page is ever requested
    /// (seen once in a full test run). The pass's length is measured between two letters the guest
    /// prints, which are <c>PASSES_PER_B</c> (3) passes apart (guests/ab-guest.S).
    /// </summary>
    internal static async Task WaitUntilMidPassAsync(string path, TimeSpan timeout)
    {
        const int PassesPerB = 3;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        int letters = -1;          // 'A' and 'B's printed when last looked
        TimeSpan? lastLetter = null; // when one was seen being printed (not there at the look before)
        while (true)
        {
            string text = File.Exists(path) ? File.ReadAllText(path) : "";
            int now = text.Count(c => c is 'A' or 'B');
            if (letters >= 0 && now > letters)
            {
                if (lastLetter is { } previous && letters >= 1 && now == letters + 1)
                {
                    TimeSpan pass = (clock.Elapsed - previous) / PassesPerB;
                    await Task.Delay(pass / 2);
                    return;
                }

                lastLetter = clock.Elapsed;
            }

            letters = now;
            Assert.IsTrue(clock.Elapsed < timeout, $"The guest did not print 'A' and then 'B' to {path} within {timeout}: {text}");
            await Task.Delay(10);
        }
    }

    internal static async Task WaitForSerialGrowthAsync(string path, long from, TimeSpan timeout)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (new FileInfo(path).Length <= from)
        {
            Assert.IsTrue(clock.Elapsed < timeout, $"The guest printed nothing more to {path} within {timeout} after the migration.");
            await Task.Delay(100);
        }
    }
}
