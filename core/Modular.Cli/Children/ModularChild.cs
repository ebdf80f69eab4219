using System.Diagnostics;
using Modular.Core.Config;

namespace Modular.Cli.Children;

/// <summary>A child <c>modular run</c> that the demo and the benchmark drive over QMP.</summary>
internal sealed class ModularChild : GuestChild
{
    private ModularChild(Process process, string serialPath, string name)
        : base(process, serialPath, $"modular run ({name})", vcpuThreadPrefix: "vcpu")
    {
    }

    /// <summary>Starts <c>modular run</c> with <paramref name="kernel"/> (from guests/ beside this executable) and waits for QMP.</summary>
    public static async Task<ModularChild> StartAsync(string directory, string name, string kernel, ulong memoryBytes, string? incoming, IEnumerable<string>? extraArguments = null)
    {
        string qmp = Path.Combine(directory, name + ".qmp");
        string serial = Path.Combine(directory, name + ".serial");
        string processPath = Environment.ProcessPath ?? "dotnet";
        var psi = new ProcessStartInfo(processPath);
        if (Path.GetFileNameWithoutExtension(processPath) == "dotnet")
        {
            psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "modular.dll"));
        }

        string[] args =
        [
            "run", "--kernel", Path.Combine(AppContext.BaseDirectory, "guests", kernel), "--memory", ByteSize.Format(memoryBytes),
            "--qmp", qmp, "--serial", "file:" + serial,
        ];
        foreach (string arg in args.Concat(extraArguments ?? []))
        {
            psi.ArgumentList.Add(arg);
        }

        if (incoming is not null)
        {
            psi.ArgumentList.Add("--incoming");
            psi.ArgumentList.Add(incoming);
        }

        return await ConnectAsync(new ModularChild(Launch(psi), serial, name), qmp);
    }
}
