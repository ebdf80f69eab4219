using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text;
using System.Text.Json.Nodes;
using Modular.Core.Boot;
using Modular.Core.Qmp;
using Modular.Core.Verification;

namespace Modular.Tests.Support;

/// <summary>
/// One real <c>modular run</c> process driven over QMP: its serial output file, its stderr, and a
/// RAM check through <c>pmemsave</c>. Disposing quits it (QMP quit, then kill), so a failing test
/// never leaves a process behind; <see cref="KillAll"/> is the last resort at assembly cleanup.
/// </summary>
internal sealed class ModularProcess : IAsyncDisposable
{
    private static readonly ConcurrentDictionary<int, Process> Live = new();
    private readonly Process _process;
    private readonly StringBuilder _stderr = new();
    private readonly TaskCompletionSource _exited = new(TaskCreationOptions.RunContinuationsAsynchronously);

    private ModularProcess(string name, Process process, string qmpSocket, string serialPath, ulong memoryBytes)
    {
        Name = name;
        _process = process;
        QmpSocket = qmpSocket;
        SerialPath = serialPath;
        MemoryBytes = memoryBytes;
        process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is not null)
            {
                lock (_stderr)
                {
                    _stderr.AppendLine(e.Data);
                }
            }
        };
        process.OutputDataReceived += (_, _) => { };
        process.EnableRaisingEvents = true;
        process.Exited += (_, _) => _exited.TrySetResult();
        process.BeginErrorReadLine();
        process.BeginOutputReadLine();
        if (process.HasExited)
        {
            _exited.TrySetResult();
        }
    }

    /// <summary>"source" or "destination", for messages.</summary>
    public string Name { get; }

    /// <summary>The QMP unix socket.</summary>
    public string QmpSocket { get; }

    /// <summary>The first serial port's output file.</summary>
    public string SerialPath { get; }

    /// <summary>Guest RAM size.</summary>
    public ulong MemoryBytes { get; }

    /// <summary>The QMP client, once connected.</summary>
    public QmpClient Qmp { get; private set; } = null!;

    /// <summary>Completes when the process has exited.</summary>
    public Task Exited => _exited.Task;

    /// <summary>The process's exit code (after <see cref="Exited"/>).</summary>
    public int ExitCode => _process.ExitCode;

    /// <summary>Everything the process wrote to stderr so far.</summary>
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

    /// <summary>Starts <c>modular run</c> with the guest, memory, QMP socket and serial file in <paramref name="directory"/>, plus <paramref name="extra"/>.</summary>
    public static async Task<ModularProcess> StartAsync(string name, string directory, string kernel, ulong memoryBytes, params string[] extra)
    {
        string qmp = Path.Combine(directory, name + ".qmp");
        string serial = Path.Combine(directory, name + ".serial");
        var args = new List<string>
        {
            "run", "--kernel", Path.Combine(AppContext.BaseDirectory, "guests", kernel), "--memory", $"{memoryBytes >> 20}M",
            "--qmp", qmp, "--serial", "file:" + serial,
        };
        args.AddRange(extra);
        Process process = CliProcess.Start(args);
        Live[process.Id] = process;
        var started = new ModularProcess(name, process, qmp, serial, memoryBytes);
        try
        {
            await started.ConnectAsync(TimeSpan.FromSeconds(60));
        }
        catch
        {
            await started.DisposeAsync();
            throw;
        }

        return started;
    }

    /// <summary>Kills every process still running (assembly cleanup).</summary>
    public static void KillAll()
    {
        foreach (Process process in Live.Values)
        {
            try
            {
                process.Kill(entireProcessTree: true);
            }
            catch (InvalidOperationException)
            {
            }
        }
    }

    private async Task ConnectAsync(TimeSpan timeout)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            if (_exited.Task.IsCompleted)
            {
                throw new AssertFailedException($"modular ({Name}) exited with {_process.ExitCode} before QMP was up: {StdErr}");
            }

            if (File.Exists(QmpSocket))
            {
                try
                {
                    Qmp = await QmpClient.ConnectAsync(QmpSocket);
                    return;
                }
                catch (Exception ex) when (ex is QmpConnectionException or IOException or System.Net.Sockets.SocketException)
                {
                }
            }

            if (clock.Elapsed > timeout)
            {
                throw new TimeoutException($"modular ({Name}): no QMP socket at {QmpSocket} after {timeout}; stderr: {StdErr}");
            }

            await Task.Delay(50);
        }
    }

    /// <summary>Waits for a stderr line starting with <paramref name="prefix"/> and returns the rest of it.</summary>
    public async Task<string> WaitForStdErrAsync(string prefix, TimeSpan timeout)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            string? line = StdErr.Split('\n').Select(l => l.TrimEnd('\r')).FirstOrDefault(l => l.StartsWith(prefix, StringComparison.Ordinal));
            if (line is not null)
            {
                return line[prefix.Length..];
            }

            if (clock.Elapsed > timeout || _exited.Task.IsCompleted)
            {
                throw new TimeoutException($"modular ({Name}) did not print '{prefix}' within {timeout}; stderr: {StdErr}");
            }

            await Task.Delay(50);
        }
    }

    /// <summary>How many times the guest printed <paramref name="c"/> on its serial port so far.</summary>
    public int SerialCount(char c)
    {
        if (!File.Exists(SerialPath))
        {
            return 0;
        }

        using var stream = new FileStream(SerialPath, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        int count = 0;
        int b;
        while ((b = stream.ReadByte()) >= 0)
        {
            count += b == c ? 1 : 0;
        }

        return count;
    }

    /// <summary>Waits until the serial output holds at least <paramref name="count"/> of <paramref name="c"/>.</summary>
    public async Task WaitForSerialAsync(char c, int count, TimeSpan timeout)
    {
        var clock = Stopwatch.StartNew();
        while (SerialCount(c) < count)
        {
            if (clock.Elapsed > timeout)
            {
                throw new TimeoutException($"modular ({Name}): the guest printed {SerialCount(c)} '{c}' in {timeout}, expected {count}; stderr: {StdErr}");
            }

            await Task.Delay(100);
        }
    }

    /// <summary>query-status's <c>status</c>.</summary>
    public async Task<string> RunStateAsync() => (await Qmp.ExecuteAsync("query-status"))!["status"]!.GetValue<string>();

    /// <summary>query-migrate.</summary>
    public async Task<JsonObject> QueryMigrateAsync() => (JsonObject)(await Qmp.ExecuteAsync("query-migrate"))!;

    /// <summary>Polls query-migrate until its status is completed, failed or cancelled.</summary>
    public async Task<JsonObject> WaitForMigrationEndAsync(TimeSpan timeout)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            JsonObject info = await QueryMigrateAsync();
            if (info["status"]?.GetValue<string>() is "completed" or "failed" or "cancelled")
            {
                return info;
            }

            if (clock.Elapsed > timeout)
            {
                throw new TimeoutException($"modular ({Name}): migration not finished after {timeout}: {info.ToJsonString()}");
            }

            await Task.Delay(100);
        }
    }

    /// <summary>Polls query-migrate until its status is <paramref name="status"/>.</summary>
    public async Task<JsonObject> WaitForMigrationStatusAsync(string status, TimeSpan timeout)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            JsonObject info = await QueryMigrateAsync();
            if (info["status"]?.GetValue<string>() == status)
            {
                return info;
            }

            if (clock.Elapsed > timeout)
            {
                throw new TimeoutException($"modular ({Name}): migration status never became {status} in {timeout}: {info.ToJsonString()}");
            }

            await Task.Delay(20);
        }
    }

    /// <summary>
    /// The A/B RAM check on this process's guest: stop, pmemsave all RAM, check the dump, and (when
    /// <paramref name="resume"/> and the guest was running) cont.
    /// </summary>
    public async Task<AbRamCheckResult> CheckRamAsync(string directory, bool resume = true)
    {
        bool wasRunning = await RunStateAsync() == "running";
        if (wasRunning)
        {
            await Qmp.ExecuteAsync("stop");
        }

        string dump = Path.Combine(directory, Name + ".ram");
        try
        {
            IReadOnlyList<GuestRamRange> layout = PcRamLayout.For(MemoryBytes);
            ulong end = layout.Max(r => r.End.Value);
            await Qmp.ExecuteAsync("pmemsave", new JsonObject { ["val"] = 0, ["size"] = end, ["filename"] = dump });
            using var memory = new Core.Verification.DumpFileMemory(dump);
            return AbRamCheck.Check(memory, layout);
        }
        finally
        {
            File.Delete(dump);
            if (wasRunning && resume)
            {
                await Qmp.ExecuteAsync("cont");
            }
        }
    }

    /// <summary>Kills the process at once (SIGKILL).</summary>
    public void Kill() => _process.Kill(entireProcessTree: true);

    /// <summary>Quits over QMP; kills the process if it has not gone within a few seconds.</summary>
    public async ValueTask DisposeAsync()
    {
        if (!_exited.Task.IsCompleted && Qmp is not null)
        {
            try
            {
                using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(5));
                await Qmp.ExecuteAsync("quit", cancellationToken: timeout.Token);
            }
            catch (Exception ex) when (ex is QmpConnectionException or QmpErrorException or OperationCanceledException or IOException)
            {
            }
        }

        try
        {
            await _exited.Task.WaitAsync(TimeSpan.FromSeconds(10));
        }
        catch (TimeoutException)
        {
            try
            {
                _process.Kill(entireProcessTree: true);
            }
            catch (InvalidOperationException)
            {
            }

            await _process.WaitForExitAsync();
        }

        if (Qmp is not null)
        {
            await Qmp.DisposeAsync();
        }

        Live.TryRemove(_process.Id, out _);
        _process.Dispose();
    }
}
