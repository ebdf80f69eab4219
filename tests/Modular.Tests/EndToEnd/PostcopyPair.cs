using System.Diagnostics;
using System.Text;
using System.Text.Json.Nodes;
using Modular.Abstractions.Memory;
using Modular.Core.Qmp;
using Modular.Tests.Support;

namespace Modular.Tests.EndToEnd;

/// <summary>
/// Two real <c>modular run</c> processes: a source running the KVM A/B guest and a destination
/// waiting with <c>--incoming</c>, each with a QMP socket and a serial file in a temp folder.
/// </summary>
internal sealed class PostcopyPair : IAsyncDisposable
{
    private readonly StringBuilder _sourceErr = new();
    private readonly StringBuilder _destinationErr = new();

    private PostcopyPair(string directory) => Directory = directory;

    public string Directory { get; }

    public Process Source { get; private set; } = null!;

    public Process Destination { get; private set; } = null!;

    public QmpClient SourceQmp { get; private set; } = null!;

    public QmpClient DestinationQmp { get; private set; } = null!;

    /// <summary>The URI the destination actually listens on.</summary>
    public string IncomingUri { get; private set; } = "";

    public string SourceSerial => Path.Combine(Directory, "serial-src.txt");

    public string DestinationSerial => Path.Combine(Directory, "serial-dst.txt");

    public string DestinationStderr
    {
        get
        {
            lock (_destinationErr)
            {
                return _destinationErr.ToString();
            }
        }
    }

    public string SourceStderr
    {
        get
        {
            lock (_sourceErr)
            {
                return _sourceErr.ToString();
            }
        }
    }

    /// <summary>Starts both processes and connects to both QMP sockets.</summary>
    /// <param name="listenUri">The destination's --incoming URI (tcp:127.0.0.1:0, unix:PATH).</param>
    /// <param name="memory">Guest RAM size.</param>
    /// <param name="sourceEnvironment">Extra environment variables for the source.</param>
    /// <param name="extraArgs">Extra arguments for both (e.g. --plugins DIR).</param>
    /// <param name="destinationArgs">Extra arguments for the destination only.</param>
    public static async Task<PostcopyPair> StartAsync(string listenUri, string memory = "256M", IDictionary<string, string>? sourceEnvironment = null, IReadOnlyList<string>? extraArgs = null, IReadOnlyList<string>? destinationArgs = null)
    {
        if (!File.Exists("/dev/kvm"))
        {
            Assert.Inconclusive("/dev/kvm is missing: the end-to-end migration tests need KVM.");
        }

        var pair = new PostcopyPair(TestPluginCompiler.TempDirectory("e2e"));
        string kernel = Path.Combine(AppContext.BaseDirectory, "guests", "ab-guest.elf");
        pair.Source = pair.Launch(
            ["run", "--kernel", kernel, "--memory", memory, "--qmp", Path.Combine(pair.Directory, "src.sock"), "--serial", "file:" + pair.SourceSerial, .. extraArgs ?? []],
            pair._sourceErr,
            sourceEnvironment);
        pair.Destination = pair.Launch(
            ["run", "--memory", memory, "--qmp", Path.Combine(pair.Directory, "dst.sock"), "--serial", "file:" + pair.DestinationSerial, "--incoming", listenUri, .. extraArgs ?? [], .. destinationArgs ?? []],
            pair._destinationErr,
            null);
        pair.SourceQmp = await ConnectAsync(Path.Combine(pair.Directory, "src.sock"), pair.Source, pair._sourceErr);
        pair.DestinationQmp = await ConnectAsync(Path.Combine(pair.Directory, "dst.sock"), pair.Destination, pair._destinationErr);
        const string marker = "listening for an incoming migration on ";
        var clock = Stopwatch.StartNew();
        while (!pair.DestinationStderr.Contains(marker, StringComparison.Ordinal))
        {
            Assert.IsTrue(clock.Elapsed < TimeSpan.FromSeconds(30), "The destination never said where it listens: " + pair.DestinationStderr);
            await Task.Delay(50);
        }

        string text = pair.DestinationStderr;
        pair.IncomingUri = text[(text.IndexOf(marker, StringComparison.Ordinal) + marker.Length)..].Split('\n')[0].Trim();
        return pair;
    }

    /// <summary>A free loopback tcp port, for a migrate-recover URI (QEMU's migrate-recover does not report a port 0 bound).</summary>
    public static int FreeTcpPort()
    {
        using var listener = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        listener.Start();
        return ((System.Net.IPEndPoint)listener.LocalEndpoint).Port;
    }

    /// <summary>Sets capabilities on both sides.</summary>
    public async Task SetCapabilitiesAsync(params string[] names)
    {
        var list = new JsonArray();
        foreach (string name in names)
        {
            list.Add(new JsonObject { ["capability"] = name, ["state"] = true });
        }

        foreach (QmpClient qmp in new[] { SourceQmp, DestinationQmp })
        {
            await qmp.ExecuteAsync("migrate-set-capabilities", new JsonObject { ["capabilities"] = list.DeepClone() });
        }
    }

    /// <summary>Polls the source's query-migrate until <paramref name="done"/> holds; returns that reply.</summary>
    public static async Task<JsonObject> WaitForAsync(QmpClient qmp, Func<JsonObject, bool> done, TimeSpan timeout, string what)
    {
        var clock = Stopwatch.StartNew();
        JsonObject last = new();
        while (clock.Elapsed < timeout)
        {
            last = (JsonObject)(await qmp.ExecuteAsync("query-migrate"))!;
            if (done(last))
            {
                return last;
            }

            await Task.Delay(50);
        }

        Assert.Fail($"Timed out after {timeout} waiting for {what}; last query-migrate: {last.ToJsonString()}");
        return last;
    }

    /// <summary>Status member of a query-migrate reply.</summary>
    public static string Status(JsonObject reply) => reply["status"]?.ToString() ?? "";

    /// <summary>Waits until the process exits; returns its exit code.</summary>
    public static int WaitForExit(Process process, TimeSpan timeout, string what)
    {
        if (!process.WaitForExit(timeout))
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"{what} did not exit within {timeout}.");
        }

        process.WaitForExit();
        return process.ExitCode;
    }

    /// <summary>Stops the destination, saves its RAM with pmemsave, and runs the A/B RAM check over the file.</summary>
    public async Task<Core.Verification.AbRamCheckResult> CheckDestinationRamAsync(ulong size)
    {
        await DestinationQmp.ExecuteAsync("stop");
        string file = Path.Combine(Directory, "dst-ram.bin");
        await DestinationQmp.ExecuteAsync("pmemsave", new JsonObject { ["val"] = 0, ["size"] = size, ["filename"] = file });
        using var memory = new Core.Verification.DumpFileMemory(file);
        return Core.Verification.AbRamCheck.Check(memory, new GuestPhysicalAddress(Core.Verification.AbRamCheck.DefaultStart), new GuestPhysicalAddress(size));
    }

    public async ValueTask DisposeAsync()
    {
        foreach ((QmpClient? qmp, Process? process) in new[] { (SourceQmp, Source), (DestinationQmp, Destination) })
        {
            if (qmp is not null)
            {
                try
                {
                    if (process is { HasExited: false })
                    {
                        await qmp.ExecuteAsync("quit").WaitAsync(TimeSpan.FromSeconds(5));
                    }
                }
                catch (Exception ex) when (ex is QmpConnectionException or QmpErrorException or TimeoutException)
                {
                    // Already gone.
                }

                await qmp.DisposeAsync();
            }

            if (process is not null)
            {
                if (!process.WaitForExit(TimeSpan.FromSeconds(10)))
                {
                    process.Kill(entireProcessTree: true);
                }

                process.Dispose();
            }
        }

        try
        {
            System.IO.Directory.Delete(Directory, recursive: true);
        }
        catch (IOException)
        {
            // A file still open by a dying process; the temp folder is cleaned up later.
        }
    }

    private Process Launch(IEnumerable<string> args, StringBuilder stderr, IDictionary<string, string>? environment)
    {
        var psi = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = AppContext.BaseDirectory,
        };
        psi.ArgumentList.Add(CliProcess.ModularDll);
        foreach (string arg in args)
        {
            psi.ArgumentList.Add(arg);
        }

        foreach ((string key, string value) in environment ?? new Dictionary<string, string>())
        {
            psi.Environment[key] = value;
        }

        var process = new Process { StartInfo = psi };
        process.ErrorDataReceived += (_, e) =>
        {
            lock (stderr)
            {
                stderr.AppendLine(e.Data);
            }
        };
        process.OutputDataReceived += (_, _) => { };
        process.Start();
        process.BeginErrorReadLine();
        process.BeginOutputReadLine();
        return process;
    }

    private static async Task<QmpClient> ConnectAsync(string socket, Process process, StringBuilder stderr)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            if (File.Exists(socket))
            {
                try
                {
                    return await QmpClient.ConnectAsync(socket);
                }
                catch (QmpConnectionException) when (clock.Elapsed < TimeSpan.FromSeconds(30))
                {
                    // Not accepting yet.
                }
            }

            Assert.IsFalse(process.HasExited, "modular exited before serving QMP: " + stderr);
            Assert.IsTrue(clock.Elapsed < TimeSpan.FromSeconds(30), "No QMP socket at " + socket + " after 30 s: " + stderr);
            await Task.Delay(50);
        }
    }
}
