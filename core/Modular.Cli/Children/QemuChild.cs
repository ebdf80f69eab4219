using System.Diagnostics;
using System.Text.Json.Nodes;

namespace Modular.Cli.Children;

/// <summary>
/// A child QEMU (<c>qemu-system-x86_64 -accel kvm</c>) running one of Modular's test guests, driven
/// over QMP like a <see cref="ModularChild"/> (Modular's QMP has QEMU's names and shapes): the
/// benchmark migrates the same guests between two QEMUs in the same run, so that "faster than QEMU"
/// is a ratio measured on the same host at the same time.
/// </summary>
internal sealed class QemuChild : GuestChild
{
    /// <summary>The program looked for on PATH.</summary>
    internal const string ProgramName = "qemu-system-x86_64";

    private QemuChild(Process process, string serialPath, string label)
        : base(process, serialPath, label, vcpuThreadPrefix: "CPU ")
    {
    }

    /// <summary>QEMU's version from its QMP greeting, e.g. "7.2.22", or "?" if it gave none.</summary>
    public string Version =>
        Qmp.Greeting["version"]?["qemu"] is JsonObject v ? $"{v["major"]}.{v["minor"]}.{v["micro"]}" : "?";

    /// <summary>
    /// The QEMU on PATH, when this host can run it with KVM; otherwise null and
    /// <paramref name="whyNot"/> says what is missing.
    /// </summary>
    public static string? Find(out string? whyNot)
    {
        string? found = (Environment.GetEnvironmentVariable("PATH") ?? "")
            .Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries)
            .Select(directory => Path.Combine(directory, ProgramName))
            .FirstOrDefault(File.Exists);
        whyNot = found is null
            ? $"{ProgramName} is not on PATH (Debian: apt-get install qemu-system-x86)"
            : !File.Exists("/dev/kvm") ? "/dev/kvm is missing" : null;
        return whyNot is null ? found : null;
    }

    /// <summary>The command line for <paramref name="kernel"/> (a path) with QMP and serial in <paramref name="directory"/>.</summary>
    /// <param name="incomingDefer">A destination: <c>-incoming defer</c>, so capabilities can be set before <c>migrate-incoming</c>.</param>
    internal static IReadOnlyList<string> Arguments(string directory, string name, string kernel, ulong memoryBytes, bool incomingDefer)
    {
        var args = new List<string>
        {
            // The same machine as Modular's as far as QEMU allows: no default devices (no VGA, no
            // NIC), one vCPU, the serial port to a file, QMP on a unix socket. debug-threads names
            // the vCPU thread "CPU 0/KVM", for the vCPU CPU figure.
            "-name", $"{name},debug-threads=on", "-accel", "kvm", "-M", "pc", "-smp", "1", "-m", $"{memoryBytes >> 20}M", "-nodefaults", "-display", "none",
            "-no-reboot", "-serial", "file:" + Path.Combine(directory, name + ".serial"),
            "-qmp", $"unix:{Path.Combine(directory, name + ".qmp")},server=on,wait=off", "-kernel", kernel,
        };
        if (incomingDefer)
        {
            args.AddRange(["-incoming", "defer"]);
        }

        return args;
    }

    /// <summary>Starts QEMU with <paramref name="kernel"/> (from guests/ beside this executable) and waits for QMP.</summary>
    public static async Task<QemuChild> StartAsync(string qemu, string directory, string name, string kernel, ulong memoryBytes, bool incomingDefer)
    {
        var psi = new ProcessStartInfo(qemu);
        foreach (string arg in Arguments(directory, name, Path.Combine(AppContext.BaseDirectory, "guests", kernel), memoryBytes, incomingDefer))
        {
            psi.ArgumentList.Add(arg);
        }

        return await ConnectAsync(new QemuChild(Launch(psi), Path.Combine(directory, name + ".serial"), $"{qemu} ({name})"), Path.Combine(directory, name + ".qmp"));
    }
}
