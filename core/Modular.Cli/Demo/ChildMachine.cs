using System.Diagnostics;
using System.Text;
using System.Text.RegularExpressions;

namespace Modular.Cli.Demo;

/// <summary>A <c>modular run</c> child process started by the demo, with its stderr collected.</summary>
internal sealed partial class ChildMachine : IAsyncDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _stderr = new();
    private readonly TaskCompletionSource<string> _listening = new(TaskCreationOptions.RunContinuationsAsynchronously);

    private ChildMachine(Process process, string name)
    {
        _process = process;
        Name = name;
        _process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is null)
            {
                _listening.TrySetException(new InvalidOperationException($"the {Name} machine exited: {StdErr.Trim()}"));
                return;
            }

            lock (_stderr)
            {
                _stderr.AppendLine(e.Data);
            }

            Match match = ListeningLine().Match(e.Data);
            if (match.Success)
            {
                _listening.TrySetResult(match.Groups[1].Value);
            }
        };
        _process.OutputDataReceived += (_, _) => { };
        _process.BeginErrorReadLine();
        _process.BeginOutputReadLine();
    }

    /// <summary>"source" or "destination".</summary>
    internal string Name { get; }

    /// <summary>Everything the child wrote on stderr so far.</summary>
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

    /// <summary>The process.</summary>
    internal Process Process => _process;

    /// <summary>Starts <c>modular run</c> with <paramref name="arguments"/>, using this very executable.</summary>
    internal static ChildMachine Start(string name, IEnumerable<string> arguments)
    {
        var psi = new ProcessStartInfo
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
            UseShellExecute = false,
        };
        string self = Environment.ProcessPath ?? "dotnet";
        if (Path.GetFileNameWithoutExtension(self) == "dotnet")
        {
            psi.FileName = self;
            psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "modular.dll"));
        }
        else
        {
            psi.FileName = self;
        }

        psi.ArgumentList.Add("run");
        foreach (string argument in arguments)
        {
            psi.ArgumentList.Add(argument);
        }

        return new ChildMachine(Process.Start(psi) ?? throw new InvalidOperationException("could not start modular run"), name);
    }

    /// <summary>The endpoint an incoming machine reports it listens on.</summary>
    internal Task<string> ListeningOn(TimeSpan timeout) => _listening.Task.WaitAsync(timeout);

    public async ValueTask DisposeAsync()
    {
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
        }

        await _process.WaitForExitAsync();
        _process.Dispose();
    }

    [GeneratedRegex("listening for an incoming migration on (\\S+)")]
    private static partial Regex ListeningLine();
}
