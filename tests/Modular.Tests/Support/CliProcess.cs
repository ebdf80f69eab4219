using System.Diagnostics;

namespace Modular.Tests.Support;

/// <summary>Runs the real <c>modular</c> executable (built beside the tests) as a child process.</summary>
internal static class CliProcess
{
    internal sealed record Result(int ExitCode, string StdOut, string StdErr);

    internal static string ModularDll => Path.Combine(AppContext.BaseDirectory, "modular.dll");

    /// <summary>Starts modular with <paramref name="args"/>; the caller owns the process.</summary>
    internal static Process Start(IEnumerable<string> args, bool redirectInput = false)
    {
        var psi = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = redirectInput,
            UseShellExecute = false,
            WorkingDirectory = AppContext.BaseDirectory,
        };
        psi.ArgumentList.Add(ModularDll);
        foreach (string arg in args)
        {
            psi.ArgumentList.Add(arg);
        }

        return Process.Start(psi) ?? throw new InvalidOperationException("could not start modular");
    }

    /// <summary>Runs modular to completion (killing it after <paramref name="timeout"/>).</summary>
    internal static Result Run(TimeSpan timeout, params string[] args)
    {
        using Process process = Start(args);
        Task<string> stdout = process.StandardOutput.ReadToEndAsync();
        Task<string> stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(timeout))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"modular {string.Join(' ', args)} did not finish within {timeout}; output so far: {stdout.Result}{stderr.Result}");
        }

        process.WaitForExit();
        return new Result(process.ExitCode, stdout.Result, stderr.Result);
    }

    internal static Result Run(params string[] args) => Run(TimeSpan.FromSeconds(60), args);
}
