using System.Diagnostics;

namespace Example.Tcpz.Tests.Support;

/// <summary>
/// Where the Modular CLI and a test guest are. MODULAR_CLI names modular.dll; by default the sample,
/// which lives in Modular's repository, uses the repository's build (core/Modular.Cli/bin/Debug/net10.0).
/// </summary>
internal static class ModularInstallation
{
    public static string? CliDll =>
        Environment.GetEnvironmentVariable("MODULAR_CLI") is { Length: > 0 } path ? path
        : RepoRoot is { } root ? Path.Combine(root, "core", "Modular.Cli", "bin", "Debug", "net10.0", "modular.dll")
        : null;

    public static string? Guest =>
        Environment.GetEnvironmentVariable("MODULAR_GUEST") is { Length: > 0 } path ? path
        : CliDll is { } cli && File.Exists(Path.Combine(Path.GetDirectoryName(cli)!, "guests", "ab-guest.elf")) ? Path.Combine(Path.GetDirectoryName(cli)!, "guests", "ab-guest.elf")
        : RepoRoot is { } root ? Path.Combine(root, "artifacts", "guests", "ab-guest.elf")
        : null;

    /// <summary>The plugin's own build output (Example.Tcpz.dll and its .deps.json), beside this test's configuration.</summary>
    public static string PluginBuildOutput
    {
        get
        {
            // tests/bin/<Configuration>/net10.0/ -> src/bin/<Configuration>/net10.0/
            var here = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd('/'));
            string configuration = here.Parent!.Name;
            string sample = here.Parent!.Parent!.Parent!.Parent!.FullName;
            return Path.Combine(sample, "src", "bin", configuration, "net10.0");
        }
    }

    private static string? RepoRoot
    {
        get
        {
            for (DirectoryInfo? dir = new(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            {
                if (File.Exists(Path.Combine(dir.FullName, "Modular.sln")))
                {
                    return dir.FullName;
                }
            }

            return null;
        }
    }

    /// <summary>Starts <c>dotnet modular.dll ARGS</c>; output goes to <paramref name="log"/>.</summary>
    public static Process Start(string cliDll, string log, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(cliDll);
        foreach (string arg in args)
        {
            psi.ArgumentList.Add(arg);
        }

        Process process = Process.Start(psi) ?? throw new InvalidOperationException("could not start dotnet");
        var writer = new StreamWriter(log) { AutoFlush = true };
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) { lock (writer) { writer.WriteLine(e.Data); } } };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) { lock (writer) { writer.WriteLine(e.Data); } } };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return process;
    }
}
