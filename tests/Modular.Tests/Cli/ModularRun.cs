using System.Diagnostics;
using System.Text;
using Modular.Tests.Support;

namespace Modular.Tests.Cli;

/// <summary>
/// A running <c>modular run</c> child process whose stdout and stderr are collected as they come
/// (the serial port on stdio prints without newlines). Disposing kills it if it still runs.
/// </summary>
internal sealed class ModularRun : IDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _stdout = new();
    private readonly StringBuilder _stderr = new();
    private readonly Task _pumps;

    private ModularRun(Process process)
    {
        _process = process;
        _pumps = Task.WhenAll(Pump(process.StandardOutput, _stdout), Pump(process.StandardError, _stderr));
    }

    internal int Id => _process.Id;

    internal string StdOut
    {
        get
        {
            lock (_stdout)
            {
                return _stdout.ToString();
            }
        }
    }

    internal string StdErr
    {
        get
        {
            lock (_stderr)
            {
                return _stderr.ToString();
            }
        }
    }

    internal bool HasExited => _process.HasExited;

    internal int ExitCode => _process.ExitCode;

    internal static ModularRun Start(params string[] args) => new(CliProcess.Start(["run", .. args]));

    /// <summary>Waits for the process to end; false on timeout.</summary>
    internal bool WaitForExit(TimeSpan timeout)
    {
        if (!_process.WaitForExit(timeout))
        {
            return false;
        }

        _process.WaitForExit();
        _pumps.Wait(TimeSpan.FromSeconds(5));
        return true;
    }

    /// <summary>Sends a signal (e.g. INT, TERM) with kill(1).</summary>
    internal void Signal(string name)
    {
        // A process started with a signal ignored keeps it ignored (POSIX; .NET leaves it so): when
        // the tests run as a background job of a shell without job control, SIGINT is ignored in
        // the test host and in every modular it starts, and no handler of modular's can see it.
        int number = name switch { "INT" => 2, "TERM" => 15, _ => 0 };
        if (number != 0 && InheritedIgnored(_process.Id, number))
        {
            Assert.Inconclusive($"modular (pid {_process.Id}) inherited SIG{name} as ignored from the test host (the tests run as a background job without job control?), so SIG{name} cannot be tested here; run the tests in the foreground.");
        }

        using Process kill = Process.Start("kill", ["-" + name, _process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        kill.WaitForExit();
        Assert.AreEqual(0, kill.ExitCode, $"kill -{name} {_process.Id}");
    }

    private static bool InheritedIgnored(int pid, int signal)
    {
        string? line = File.ReadLines($"/proc/{pid}/status").FirstOrDefault(l => l.StartsWith("SigIgn:", StringComparison.Ordinal));
        return line is not null
            && ulong.TryParse(line["SigIgn:".Length..].Trim(), System.Globalization.NumberStyles.HexNumber, System.Globalization.CultureInfo.InvariantCulture, out ulong mask)
            && (mask & (1UL << (signal - 1))) != 0;
    }

    /// <summary>Waits until <paramref name="condition"/> holds, failing with the output so far (and the exit code if it ended).</summary>
    internal void WaitUntil(Func<bool> condition, TimeSpan timeout, string what)
    {
        var clock = Stopwatch.StartNew();
        while (!condition())
        {
            if (clock.Elapsed > timeout || (_process.HasExited && !condition()))
            {
                Assert.Fail($"Waited in vain for {what}; {Describe()}");
            }

            Thread.Sleep(20);
        }
    }

    /// <summary>What the process said so far, for assertion messages.</summary>
    internal string Describe() =>
        (_process.HasExited ? $"modular exited with {_process.ExitCode}" : "modular still runs") + $"; stdout: '{StdOut}'; stderr: '{StdErr}'";

    public void Dispose()
    {
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
            _process.WaitForExit();
        }

        _process.Dispose();
    }

    private static async Task Pump(StreamReader reader, StringBuilder into)
    {
        char[] buffer = new char[1024];
        int read;
        while ((read = await reader.ReadAsync(buffer).ConfigureAwait(false)) > 0)
        {
            lock (into)
            {
                into.Append(buffer, 0, read);
            }
        }
    }
}
