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
        using Process kill = Process.Start("kill", ["-" + name, _process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        kill.WaitForExit();
        Assert.AreEqual(0, kill.ExitCode, $"kill -{name} {_process.Id}");
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
