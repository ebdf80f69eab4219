using System.Diagnostics;
using System.Text.Json.Nodes;
using Modular.Core.Qmp;
using Modular.Core.Verification;
using Modular.Tests.Support;

namespace Modular.Tests.EndToEnd;

/// <summary>
/// Postcopy recovery over the real tcp transport with a preempt channel: the kernel destroys every
/// socket of the migration mid-postcopy (<c>ss -K</c>, as a failing link would reset them), both
/// sides pause, and the migration resumes over unix, driven by the CLI as an operator would drive it.
/// </summary>
[TestClass]
public sealed class PostcopyRecoveryTests
{
    public TestContext TestContext { get; set; } = null!;

    [TestMethod]
    public async Task TcpSocketsDestroyedMidPostcopy_BothPause_CliRecoversOverUnix()
    {
        if (!CanDestroySockets(out string why))
        {
            Assert.Inconclusive(why);
        }

        await using PostcopyPair pair = await PostcopyPair.StartAsync("tcp:127.0.0.1:0");
        await pair.SetCapabilitiesAsync("events", "postcopy-ram", "postcopy-preempt", "x-modular-postcopy-recovery");
        // 256 MiB at 24 MB/s after the switch: about ten seconds of postcopy to cut into.
        await pair.SourceQmp.ExecuteAsync("migrate-set-parameters", JsonNode.Parse("""{ "max-postcopy-bandwidth": 25165824 }""")!.AsObject());
        await PostcopyEndToEndTests.WaitForSerialAsync(pair.SourceSerial, 'A', TimeSpan.FromSeconds(30));
        await pair.SourceQmp.ExecuteAsync("migrate", new JsonObject { ["uri"] = pair.IncomingUri });
        await pair.SourceQmp.ExecuteAsync("migrate-start-postcopy");

        // Well into postcopy (the guest runs on the destination), cut every connection to the port.
        JsonObject running = await PostcopyPair.WaitForAsync(pair.SourceQmp, r => PostcopyPair.Status(r) == "postcopy-active" && r["ram"]!["transferred"]!.GetValue<long>() > (96L << 20), TimeSpan.FromSeconds(60), "postcopy to be well under way");
        Assert.AreEqual("running", (await pair.DestinationQmp.ExecuteAsync("query-status"))!["status"]!.ToString());
        string port = pair.IncomingUri[(pair.IncomingUri.LastIndexOf(':') + 1)..];
        DestroySockets("dport", port);
        DestroySockets("sport", port);

        JsonObject source = await PostcopyPair.WaitForAsync(pair.SourceQmp, r => PostcopyPair.Status(r) is "postcopy-paused" or "completed" or "failed", TimeSpan.FromSeconds(30), "the source to pause");
        Assert.AreEqual("postcopy-paused", PostcopyPair.Status(source), source.ToJsonString() + pair.SourceStderr);
        Assert.IsFalse(string.IsNullOrEmpty(source["x-modular-postcopy-pause-reason"]?.ToString()), "the source says why it paused: " + source.ToJsonString());
        JsonObject destination = await PostcopyPair.WaitForAsync(pair.DestinationQmp, r => PostcopyPair.Status(r) is "postcopy-paused" or "completed" or "failed", TimeSpan.FromSeconds(30), "the destination to pause");
        Assert.AreEqual("postcopy-paused", PostcopyPair.Status(destination), destination.ToJsonString() + pair.DestinationStderr);
        long remainingAtPause = source["ram"]!["remaining"]!.GetValue<long>();
        long preemptPagesAtPause = source["ram"]!["x-modular-preempt-pages"]!.GetValue<long>();
        Assert.IsGreaterThan(0L, remainingAtPause, "the cut came before everything was sent: " + source.ToJsonString());

        // The operator's CLI: migrate-recover on the destination, migrate --resume on the source.
        string socket = Path.Combine(pair.Directory, "recover.sock");
        CliProcess.Result recover = await Task.Run(() => CliProcess.Run(TimeSpan.FromMinutes(1), "migrate-recover", "--qmp", Path.Combine(pair.Directory, "dst.sock"), "unix:" + socket));
        TestContext.WriteLine(recover.StdOut + recover.StdErr);
        Assert.AreEqual(0, recover.ExitCode, recover.StdErr);
        StringAssert.Contains(recover.StdOut, "listening on unix:" + socket);
        CliProcess.Result resume = await Task.Run(() => CliProcess.Run(TimeSpan.FromMinutes(2), "migrate", "--qmp", Path.Combine(pair.Directory, "src.sock"), "--resume", "unix:" + socket));
        TestContext.WriteLine(resume.StdOut + resume.StdErr);
        Assert.AreEqual(0, resume.ExitCode, resume.StdOut + resume.StdErr + pair.SourceStderr);
        StringAssert.Contains(resume.StdOut, "status:       completed");
        StringAssert.Contains(resume.StdOut, "recoveries:   1");

        destination = await PostcopyPair.WaitForAsync(pair.DestinationQmp, r => PostcopyPair.Status(r) is "completed" or "failed", TimeSpan.FromSeconds(30), "the destination to complete");
        Assert.AreEqual("completed", PostcopyPair.Status(destination), destination.ToJsonString() + pair.DestinationStderr);
        Assert.AreEqual(1L, destination["x-modular-postcopy-recoveries"]!.GetValue<long>(), destination.ToJsonString());
        source = (JsonObject)(await pair.SourceQmp.ExecuteAsync("query-migrate"))!;
        TestContext.WriteLine("source: " + source.ToJsonString());
        TestContext.WriteLine("destination: " + destination.ToJsonString());

        // The preempt channel is opened again on the recovered connection: requested pages use it.
        Assert.IsGreaterThan(preemptPagesAtPause, source["ram"]!["x-modular-preempt-pages"]!.GetValue<long>(), "after the recovery requested pages travel on a new preempt channel: " + source.ToJsonString());

        // Only what the destination lacked went again. Requested pages travel twice by design (preempt
        // channel and background); the background stream alone stays near one copy of RAM, where
        // resending everything after the recovery would add the 96 MiB and more sent before the cut.
        long preemptBytes = source["ram"]!["x-modular-preempt-pages"]!.GetValue<long>() * 4104;
        long background = source["ram"]!["transferred"]!.GetValue<long>() - preemptBytes;
        Assert.IsLessThan((long)PostcopyEndToEndTests.Memory + (16L << 20), background, "after the recovery the source sends what the received bitmaps lack, not everything again: " + source.ToJsonString());

        long before = new FileInfo(pair.DestinationSerial).Length;
        await PostcopyEndToEndTests.WaitForSerialGrowthAsync(pair.DestinationSerial, before, TimeSpan.FromSeconds(30));
        AbRamCheckResult check = await pair.CheckDestinationRamAsync(PostcopyEndToEndTests.Memory);
        Assert.IsTrue(check.Passed, check.Message);
        _ = running;
    }

    /// <summary>
    /// QEMU's migrate-pause on the destination, in TLS: the operator pauses a postcopy migration on
    /// purpose (for example to move it to another network); both sides pause; the recovery's new
    /// connection runs its own TLS handshake (the same tls-creds, the destination's tls-authz) and
    /// the migration completes. migrate-pause is refused where it cannot pause safely.
    /// </summary>
    [TestMethod]
    public async Task MigratePauseInTls_BothPause_ResumeInTlsCompletes()
    {
        string pki = Path.Combine(TestPluginCompiler.TempDirectory("recovery-pki"), "pki");
        Core.Migration.Tls.TlsCredentialsWriter.Write(pki, ["localhost", "127.0.0.1"], TimeSpan.FromDays(1));
        await using PostcopyPair pair = await PostcopyPair.StartAsync("tcp:127.0.0.1:0", destinationArgs: TlsEndToEndTests.DestinationArguments(pki));
        await pair.SourceQmp.ExecuteAsync("object-add", new JsonObject { ["qom-type"] = "tls-creds-x509", ["id"] = "tls0", ["dir"] = pki, ["endpoint"] = "client" });
        await pair.SourceQmp.ExecuteAsync("migrate-set-parameters", JsonNode.Parse("""{ "tls-creds": "tls0", "max-postcopy-bandwidth": 25165824 }""")!.AsObject());

        // Without the capability migrate-pause is refused: pausing would lose the guest.
        QmpErrorException nothing = await Assert.ThrowsExactlyAsync<QmpErrorException>(() => pair.SourceQmp.ExecuteAsync("migrate-pause"));
        StringAssert.Contains(nothing.Message, "only supported during postcopy-active or postcopy-recover state");

        await pair.SetCapabilitiesAsync("events", "postcopy-ram", "x-modular-postcopy-recovery");
        await PostcopyEndToEndTests.WaitForSerialAsync(pair.SourceSerial, 'A', TimeSpan.FromSeconds(30));
        await pair.SourceQmp.ExecuteAsync("migrate", new JsonObject { ["uri"] = pair.IncomingUri });
        await pair.SourceQmp.ExecuteAsync("migrate-start-postcopy");
        await PostcopyPair.WaitForAsync(pair.DestinationQmp, r => PostcopyPair.Status(r) == "postcopy-active", TimeSpan.FromSeconds(60), "the destination to run postcopy");
        await PostcopyPair.WaitForAsync(pair.SourceQmp, r => PostcopyPair.Status(r) == "postcopy-active" && r["ram"]!["transferred"]!.GetValue<long>() > (48L << 20), TimeSpan.FromSeconds(60), "postcopy to be well under way");

        await pair.DestinationQmp.ExecuteAsync("migrate-pause");
        JsonObject destination = await PostcopyPair.WaitForAsync(pair.DestinationQmp, r => PostcopyPair.Status(r) is "postcopy-paused" or "completed" or "failed", TimeSpan.FromSeconds(30), "the destination to pause");
        Assert.AreEqual("postcopy-paused", PostcopyPair.Status(destination), destination.ToJsonString() + pair.DestinationStderr);
        Assert.AreEqual("Paused by migrate-pause.", destination["x-modular-postcopy-pause-reason"]?.ToString(), destination.ToJsonString());
        JsonObject source = await PostcopyPair.WaitForAsync(pair.SourceQmp, r => PostcopyPair.Status(r) is "postcopy-paused" or "completed" or "failed", TimeSpan.FromSeconds(30), "the source to pause");
        Assert.AreEqual("postcopy-paused", PostcopyPair.Status(source), source.ToJsonString() + pair.SourceStderr);
        QmpErrorException again = await Assert.ThrowsExactlyAsync<QmpErrorException>(() => pair.SourceQmp.ExecuteAsync("migrate-pause"));
        StringAssert.Contains(again.Message, "only supported during postcopy-active or postcopy-recover state");

        string recoverUri = $"tcp:127.0.0.1:{PostcopyPair.FreeTcpPort()}";
        await pair.DestinationQmp.ExecuteAsync("migrate-recover", new JsonObject { ["uri"] = recoverUri });
        await pair.SourceQmp.ExecuteAsync("migrate", new JsonObject { ["uri"] = recoverUri, ["resume"] = true });
        source = await PostcopyPair.WaitForAsync(pair.SourceQmp, r => PostcopyPair.Status(r) is "completed" or "failed", TimeSpan.FromSeconds(90), "the source to complete after the recovery");
        Assert.AreEqual("completed", PostcopyPair.Status(source), source.ToJsonString() + pair.SourceStderr);
        destination = await PostcopyPair.WaitForAsync(pair.DestinationQmp, r => PostcopyPair.Status(r) is "completed" or "failed", TimeSpan.FromSeconds(30), "the destination to complete");
        Assert.AreEqual("completed", PostcopyPair.Status(destination), destination.ToJsonString() + pair.DestinationStderr);
        TestContext.WriteLine("source: " + source.ToJsonString());
        TestContext.WriteLine("destination: " + destination.ToJsonString());

        AbRamCheckResult check = await pair.CheckDestinationRamAsync(PostcopyEndToEndTests.Memory);
        Assert.IsTrue(check.Passed, check.Message);
    }

    /// <summary>
    /// A paused migration holds no process hostage: QMP quit ends both the paused source and the
    /// paused destination (whose vCPU may be waiting for a missing page) at once.
    /// </summary>
    [TestMethod]
    public async Task PausedSides_QuitPromptly()
    {
        await using PostcopyPair pair = await PostcopyPair.StartAsync("tcp:127.0.0.1:0");
        await pair.SetCapabilitiesAsync("postcopy-ram", "x-modular-postcopy-recovery");
        await pair.SourceQmp.ExecuteAsync("migrate-set-parameters", JsonNode.Parse("""{ "max-postcopy-bandwidth": 25165824 }""")!.AsObject());
        await PostcopyEndToEndTests.WaitForSerialAsync(pair.SourceSerial, 'A', TimeSpan.FromSeconds(30));
        await pair.SourceQmp.ExecuteAsync("migrate", new JsonObject { ["uri"] = pair.IncomingUri });
        await pair.SourceQmp.ExecuteAsync("migrate-start-postcopy");
        await PostcopyPair.WaitForAsync(pair.DestinationQmp, r => PostcopyPair.Status(r) == "postcopy-active", TimeSpan.FromSeconds(60), "the destination to run postcopy");
        await PostcopyPair.WaitForAsync(pair.SourceQmp, r => r["ram"]!["transferred"]!.GetValue<long>() > (32L << 20), TimeSpan.FromSeconds(60), "postcopy to be under way");
        await pair.SourceQmp.ExecuteAsync("migrate-pause");
        await PostcopyPair.WaitForAsync(pair.DestinationQmp, r => PostcopyPair.Status(r) == "postcopy-paused", TimeSpan.FromSeconds(30), "the destination to pause");
        JsonObject source = await PostcopyPair.WaitForAsync(pair.SourceQmp, r => PostcopyPair.Status(r) == "postcopy-paused", TimeSpan.FromSeconds(30), "the source to pause");
        Assert.AreEqual("Paused by migrate-pause.", source["x-modular-postcopy-pause-reason"]?.ToString(), source.ToJsonString());
        await Task.Delay(500); // the destination's guest runs into missing pages meanwhile

        foreach ((QmpClient qmp, Process process, string name) in new[] { (pair.DestinationQmp, pair.Destination, "destination"), (pair.SourceQmp, pair.Source, "source") })
        {
            var clock = Stopwatch.StartNew();
            try
            {
                await qmp.ExecuteAsync("quit");
            }
            catch (QmpConnectionException)
            {
                // It closed the connection while answering.
            }

            Assert.IsTrue(process.WaitForExit(TimeSpan.FromSeconds(10)), $"the paused {name} did not exit within 10 s of quit: " + (name == "source" ? pair.SourceStderr : pair.DestinationStderr));
            TestContext.WriteLine($"{name} exited {process.ExitCode} in {clock.ElapsedMilliseconds} ms");
        }
    }


    /// <summary>Whether <c>ss -K</c> can destroy sockets here (iproute2, CAP_NET_ADMIN, a kernel with INET_DIAG_DESTROY): tried on a loopback connection of our own.</summary>
    private static bool CanDestroySockets(out string why)
    {
        using var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        listener.Start();
        int port = ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
        using var client = new System.Net.Sockets.TcpClient();
        client.Connect(System.Net.IPAddress.Loopback, port);
        using System.Net.Sockets.TcpClient accepted = listener.AcceptTcpClient();
        try
        {
            DestroySockets("dport", port.ToString(System.Globalization.CultureInfo.InvariantCulture));
        }
        catch (Exception ex) when (ex is System.ComponentModel.Win32Exception or InvalidOperationException)
        {
            why = "ss -K cannot run here: " + ex.Message;
            return false;
        }

        try
        {
            client.GetStream().Write(new byte[1]);
            Thread.Sleep(50);
            client.GetStream().Write(new byte[1]);
        }
        catch (IOException)
        {
            why = string.Empty;
            return true;
        }

        why = "ss -K did not destroy a loopback socket here (it needs CAP_NET_ADMIN and a kernel with CONFIG_INET_DIAG_DESTROY)";
        return false;
    }

    private static void DestroySockets(string which, string port)
    {
        var start = new ProcessStartInfo("ss") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string arg in new[] { "-K", which == "dport" ? "dst" : "src", "127.0.0.1", which, "=", port })
        {
            start.ArgumentList.Add(arg);
        }

        using Process ss = Process.Start(start) ?? throw new InvalidOperationException("ss did not start");
        ss.StandardOutput.ReadToEnd();
        ss.StandardError.ReadToEnd();
        if (!ss.WaitForExit(10_000))
        {
            ss.Kill();
            throw new InvalidOperationException("ss -K did not finish");
        }
    }
}
