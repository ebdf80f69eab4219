using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using Modular.Core.Config;
using Modular.Core.Qmp;

namespace Modular.Cli.Children;

/// <summary>
/// A child <c>modular run</c> that the demo and the benchmark drive over QMP. Disposing quits it, and kills it if it
/// does not go, so neither ever leaves a guest running.
/// </summary>
internal sealed class ModularChild : IAsyncDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _stderr = new();

    private ModularChild(Process process, string serialPath)
    {
        _process = process;
        SerialPath = serialPath;
        process.ErrorDataReceived += (_, e) =>
        {
            lock (_stderr)
            {
                _stderr.AppendLine(e.Data);
            }
        };
        process.OutputDataReceived += (_, _) => { };
        process.BeginErrorReadLine();
        process.BeginOutputReadLine();
    }

    /// <summary>The serial output file.</summary>
    public string SerialPath { get; }

    /// <summary>The child's process id.</summary>
    public int ProcessId => _process.Id;

    /// <summary>CPU time (user and system, all threads) the child has used so far.</summary>
    public TimeSpan CpuTime
    {
        get
        {
            _process.Refresh();
            return _process.TotalProcessorTime;
        }
    }

    /// <summary>
    /// CPU time used so far by the child's vCPU threads (those named vcpuN), from /proc (10 ms
    /// ticks): how much the guest itself ran, as opposed to <see cref="CpuTime"/>.
    /// </summary>
    public TimeSpan VcpuCpuTime
    {
        get
        {
            long ticks = 0;
            foreach (string task in Directory.EnumerateDirectories($"/proc/{_process.Id}/task"))
            {
                try
                {
                    if (!File.ReadAllText(Path.Combine(task, "comm")).StartsWith("vcpu", StringComparison.Ordinal))
                    {
                        continue;
                    }

                    // Fields after the ") " that ends comm: state is field 3, utime 14 and stime 15.
                    string stat = File.ReadAllText(Path.Combine(task, "stat"));
                    string[] fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
                    ticks += long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture);
                }
                catch (IOException)
                {
                    // The thread ended meanwhile.
                }
            }

            return TimeSpan.FromMilliseconds(ticks * 10);
        }
    }

    /// <summary>QMP, once connected.</summary>
    public QmpClient Qmp { get; private set; } = null!;

    /// <summary>What the child wrote on stderr.</summary>
    public string StdErr
    {
        get
        {
            lock (_stderr)
            {
                return _stderr.ToString();
            }
        }
    }

    /// <summary>Starts <c>modular run</c> with <paramref name="kernel"/> (from guests/ beside this executable) and waits for QMP.</summary>
    public static async Task<ModularChild> StartAsync(string directory, string name, string kernel, ulong memoryBytes, string? incoming, IEnumerable<string>? extraArguments = null)
    {
        string qmp = Path.Combine(directory, name + ".qmp");
        string serial = Path.Combine(directory, name + ".serial");
        string processPath = Environment.ProcessPath ?? "dotnet";
        var psi = new ProcessStartInfo(processPath)
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
            UseShellExecute = false,
        };
        if (Path.GetFileNameWithoutExtension(processPath) == "dotnet")
        {
            psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "modular.dll"));
        }

        string[] args =
        [
            "run", "--kernel", Path.Combine(AppContext.BaseDirectory, "guests", kernel), "--memory", ByteSize.Format(memoryBytes),
            "--qmp", qmp, "--serial", "file:" + serial,
        ];
        foreach (string arg in args)
        {
            psi.ArgumentList.Add(arg);
        }

        foreach (string arg in extraArguments ?? [])
        {
            psi.ArgumentList.Add(arg);
        }

        if (incoming is not null)
        {
            psi.ArgumentList.Add("--incoming");
            psi.ArgumentList.Add(incoming);
        }

        var child = new ModularChild(Process.Start(psi) ?? throw new InvalidOperationException("could not start modular"), serial);
        try
        {
            var clock = Stopwatch.StartNew();
            while (true)
            {
                if (child._process.HasExited)
                {
                    throw new InvalidOperationException($"modular run ({name}) exited with {child._process.ExitCode}: {child.StdErr}");
                }

                if (File.Exists(qmp))
                {
                    try
                    {
                        child.Qmp = await QmpClient.ConnectAsync(qmp);
                        return child;
                    }
                    catch (QmpConnectionException) when (clock.Elapsed < TimeSpan.FromSeconds(60))
                    {
                    }
                }

                if (clock.Elapsed > TimeSpan.FromSeconds(60))
                {
                    throw new TimeoutException($"modular run ({name}) did not serve QMP on {qmp} within a minute: {child.StdErr}");
                }

                await Task.Delay(50);
            }
        }
        catch
        {
            await child.DisposeAsync();
            throw;
        }
    }

    /// <summary>The rest of the stderr line that starts with <paramref name="prefix"/>, waiting for it.</summary>
    public async Task<string> WaitForStdErrAsync(string prefix, TimeSpan timeout)
    {
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < timeout && !_process.HasExited)
        {
            string? line = StdErr.Split('\n').FirstOrDefault(l => l.StartsWith(prefix, StringComparison.Ordinal));
            if (line is not null)
            {
                return line[prefix.Length..].Trim();
            }

            await Task.Delay(50);
        }

        throw new TimeoutException($"modular run never printed '{prefix}': {StdErr}");
    }

    /// <summary>Waits until the guest printed <paramref name="c"/> on its serial port.</summary>
    public async Task WaitForSerialAsync(char c, TimeSpan timeout)
    {
        var clock = Stopwatch.StartNew();
        while (!File.Exists(SerialPath) || !File.ReadAllText(SerialPath).Contains(c, StringComparison.Ordinal))
        {
            if (clock.Elapsed > timeout || _process.HasExited)
            {
                throw new TimeoutException($"the guest did not print '{c}' within {timeout}: {StdErr}");
            }

            await Task.Delay(100);
        }
    }

    /// <summary>query-migrate.</summary>
    public async Task<JsonObject> QueryMigrateAsync() => (JsonObject)(await Qmp.ExecuteAsync("query-migrate"))!;

    /// <summary>Quits over QMP, then kills the child if it is still there after 10 s.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Qmp is not null)
        {
            try
            {
                using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
                await Qmp.ExecuteAsync("quit", cancellationToken: timeout.Token);
            }
            catch (Exception ex) when (ex is QmpConnectionException or QmpErrorException or OperationCanceledException or IOException)
            {
            }

            await Qmp.DisposeAsync();
        }

        using var wait = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        try
        {
            await _process.WaitForExitAsync(wait.Token);
        }
        catch (OperationCanceledException)
        {
            _process.Kill(entireProcessTree: true);
            await _process.WaitForExitAsync();
        }

        _process.Dispose();
    }
}
