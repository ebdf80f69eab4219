using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using Modular.Core.Qmp;

namespace Modular.Cli.Children;

/// <summary>
/// A child process running a guest that the demo and the benchmark drive over QMP: a
/// <c>modular run</c> (<see cref="ModularChild"/>) or, for comparison, QEMU (<see cref="QemuChild"/>).
/// Disposing quits it over QMP, and kills it if it does not go, so neither ever leaves a guest running.
/// </summary>
internal abstract class GuestChild : IAsyncDisposable
{
    private static readonly TimeSpan QmpPatience = TimeSpan.FromSeconds(60);

    private readonly Process _process;
    private readonly StringBuilder _stderr = new();
    private readonly string _vcpuThreadPrefix;

    /// <param name="process">The started child, with stdout and stderr redirected.</param>
    /// <param name="serialPath">Its serial output file.</param>
    /// <param name="label">Names the child in errors, e.g. "modular run (src0)".</param>
    /// <param name="vcpuThreadPrefix">How its vCPU threads' names start (/proc/PID/task/TID/comm).</param>
    protected GuestChild(Process process, string serialPath, string label, string vcpuThreadPrefix)
    {
        _process = process;
        SerialPath = serialPath;
        Label = label;
        _vcpuThreadPrefix = vcpuThreadPrefix;
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

    /// <summary>Names the child in errors.</summary>
    public string Label { get; }

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
    /// CPU time used so far by the child's vCPU threads, from /proc (10 ms ticks): how much the
    /// guest itself ran, as opposed to <see cref="CpuTime"/>.
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
                    if (!File.ReadAllText(Path.Combine(task, "comm")).StartsWith(_vcpuThreadPrefix, StringComparison.Ordinal))
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

    /// <summary>Starts <paramref name="start"/>'s program with stdout and stderr redirected.</summary>
    protected static Process Launch(ProcessStartInfo start)
    {
        start.RedirectStandardError = true;
        start.RedirectStandardOutput = true;
        start.UseShellExecute = false;
        try
        {
            return Process.Start(start) ?? throw new InvalidOperationException($"could not start {start.FileName}");
        }
        catch (System.ComponentModel.Win32Exception ex)
        {
            throw new InvalidOperationException($"could not start {start.FileName}: {ex.Message}", ex);
        }
    }

    /// <summary>Waits for the child's QMP socket and connects; disposes the child if that fails.</summary>
    protected static async Task<T> ConnectAsync<T>(T child, string qmpPath)
        where T : GuestChild
    {
        try
        {
            var clock = Stopwatch.StartNew();
            while (true)
            {
                if (child._process.HasExited)
                {
                    throw new InvalidOperationException($"{child.Label} exited with {child._process.ExitCode}: {child.StdErr}");
                }

                if (File.Exists(qmpPath))
                {
                    try
                    {
                        child.Qmp = await QmpClient.ConnectAsync(qmpPath);
                        return child;
                    }
                    catch (QmpConnectionException) when (clock.Elapsed < QmpPatience)
                    {
                    }
                }

                if (clock.Elapsed > QmpPatience)
                {
                    throw new TimeoutException($"{child.Label} did not serve QMP on {qmpPath} within a minute: {child.StdErr}");
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

        throw new TimeoutException($"{Label} never printed '{prefix}': {StdErr}");
    }

    /// <summary>Waits until the guest printed <paramref name="c"/> on its serial port.</summary>
    public async Task WaitForSerialAsync(char c, TimeSpan timeout)
    {
        var clock = Stopwatch.StartNew();
        while (!File.Exists(SerialPath) || !File.ReadAllText(SerialPath).Contains(c, StringComparison.Ordinal))
        {
            if (clock.Elapsed > timeout || _process.HasExited)
            {
                throw new TimeoutException($"the guest in {Label} did not print '{c}' within {timeout}: {StdErr}");
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
