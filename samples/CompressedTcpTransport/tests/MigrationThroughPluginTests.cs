using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.Json.Nodes;
using Example.Tcpz.Tests.Support;

namespace Example.Tcpz.Tests;

/// <summary>
/// The end-to-end proof: tcpz's build output, dropped into a plugins folder, carries a real live
/// migration between two <c>modular run</c> processes driven over QMP, as an operator would do it.
/// NEEDS THE MIGRATION ENGINE (QMP migrate, <c>modular run --incoming</c>): until it is in the
/// Modular build this test runs against, it fails, saying so. Run it alone with
/// <c>dotnet test --filter TestCategory=migration</c> (build/test-sample.sh does).
/// </summary>
[TestClass]
public sealed class MigrationThroughPluginTests
{
    private static readonly TimeSpan MigrationTimeout = TimeSpan.FromMinutes(3);

    [TestMethod]
    [TestCategory("migration")]
    public async Task AGuestMigratesThroughTheDroppedInPlugin()
    {
        string cli = ModularInstallation.CliDll ?? "";
        string guest = ModularInstallation.Guest ?? "";
        if (!File.Exists(cli) || !File.Exists(guest))
        {
            Assert.Inconclusive($"The Modular CLI ('{cli}') or the test guest ('{guest}') is not built: run `dotnet build` in Modular's repository, or set MODULAR_CLI and MODULAR_GUEST.");
        }

        string work = Directory.CreateTempSubdirectory("tcpz-migration-").FullName;
        string plugins = Path.Combine(work, "plugins");
        DropPluginInto(Path.Combine(plugins, "tcpz"));

        // `modular plugins` finds it and says it is usable here.
        string listing = Path.Combine(work, "plugins.txt");
        using (Process list = ModularInstallation.Start(cli, listing, "plugins", "--plugins", plugins))
        {
            Assert.IsTrue(list.WaitForExit(60_000), "modular plugins did not finish");
            list.WaitForExit();
        }

        string found = await File.ReadAllTextAsync(listing);
        Assert.IsTrue(found.Split('\n').Any(line => System.Text.RegularExpressions.Regex.IsMatch(line, @"\btcpz\b.*\btransport\b.*\btcpz\b.*\byes\b")),
            $"modular plugins did not list tcpz as a usable transport:\n{found}");
        Assert.IsFalse(found.Split('\n').Any(line => line.StartsWith("problem:", StringComparison.Ordinal) && line.Contains("tcpz", StringComparison.Ordinal)),
            $"modular plugins reported a problem with tcpz:\n{found}");

        int port = FreePort();
        string uri = $"tcpz:127.0.0.1:{port}";
        string sourceQmp = Path.Combine(work, "src.qmp"), destinationQmp = Path.Combine(work, "dst.qmp");
        using Process destination = ModularInstallation.Start(cli, Path.Combine(work, "dst.log"),
            "run", "--kernel", guest, "--memory", "64M", "--serial", "null", "--qmp", destinationQmp, "--incoming", uri, "--plugins", plugins);
        using Process source = ModularInstallation.Start(cli, Path.Combine(work, "src.log"),
            "run", "--kernel", guest, "--memory", "64M", "--serial", "null", "--qmp", sourceQmp, "--plugins", plugins);
        try
        {
            await using QmpConnection dst = await OpenOrExplain(destinationQmp, destination, work, "destination");
            await using QmpConnection src = await OpenOrExplain(sourceQmp, source, work, "source");
            await Task.Delay(1000); // let the guest touch its pages

            await src.ExecuteAsync("migrate", new JsonObject { ["uri"] = uri });
            string status = "";
            var clock = Stopwatch.StartNew();
            while (clock.Elapsed < MigrationTimeout)
            {
                status = (string?)(await src.ExecuteAsync("query-migrate"))?["status"] ?? "";
                if (status is "completed" or "failed" or "cancelled")
                {
                    break;
                }

                await Task.Delay(200);
            }

            Assert.AreEqual("completed", status, $"migration through {uri} ended as '{status}'; logs in {work}");
            JsonNode? running = await dst.ExecuteAsync("query-status");
            Assert.AreEqual("running", (string?)running?["status"], $"the destination is not running after the migration; logs in {work}");
        }
        finally
        {
            foreach (Process p in new[] { source, destination })
            {
                if (!p.HasExited)
                {
                    p.Kill(entireProcessTree: true);
                    p.WaitForExit(10_000);
                }
            }
        }

        Directory.Delete(work, recursive: true);
    }

    /// <summary>Copies the plugin's build output (its assembly, deps.json and pdb: nothing of Modular's) into <paramref name="folder"/>.</summary>
    private static void DropPluginInto(string folder)
    {
        Directory.CreateDirectory(folder);
        string output = ModularInstallation.PluginBuildOutput;
        foreach (string file in Directory.GetFiles(output, "Example.Tcpz.*"))
        {
            File.Copy(file, Path.Combine(folder, Path.GetFileName(file)));
        }

        Assert.IsTrue(File.Exists(Path.Combine(folder, "Example.Tcpz.dll")), $"no Example.Tcpz.dll in {output}: build the plugin project first");
        Assert.IsFalse(File.Exists(Path.Combine(output, "Modular.Abstractions.dll")), "the plugin's output carries its own Modular.Abstractions.dll; the host would ignore the plugin");
    }

    private static async Task<QmpConnection> OpenOrExplain(string path, Process process, string work, string side)
    {
        try
        {
            return await QmpConnection.OpenAsync(path, TimeSpan.FromSeconds(30), () => process.HasExited);
        }
        catch (Exception ex) when (ex is SocketException or IOException)
        {
            process.WaitForExit(2000);
            string log = File.ReadAllText(Path.Combine(work, side == "source" ? "src.log" : "dst.log"));
            throw new AssertFailedException(
                $"The {side} `modular run` did not serve QMP ({(process.HasExited ? $"it exited with {process.ExitCode}" : "it is still starting")}). " +
                $"If it says incoming migration is not implemented, this Modular build predates the migration engine. Its output:\n{log}");
        }
    }

    private static int FreePort()
    {
        using var probe = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        probe.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return ((IPEndPoint)probe.LocalEndPoint!).Port;
    }
}
