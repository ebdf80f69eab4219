using System.Reflection;
using System.Text.Json.Nodes;

namespace Modular.Core.Qmp;

/// <summary>
/// What <c>query-version</c> and the greeting report: QEMU's VersionInfo shape,
/// <c>{"qemu": {"major": M, "minor": m, "micro": u}, "package": "..."}</c>. Modular puts its own
/// version in the triple and says who it is in <c>package</c>; QMP tooling only reads the numbers.
/// </summary>
/// <param name="Major">Major version number.</param>
/// <param name="Minor">Minor version number.</param>
/// <param name="Micro">Micro (patch) version number.</param>
/// <param name="Package">Free text naming the build, e.g. <c>Modular 0.1.0</c>.</param>
public sealed record QmpVersionInfo(int Major, int Minor, int Micro, string Package)
{
    /// <summary>Modular's own version, from the Modular.Core assembly: <c>Modular M.m.u</c>.</summary>
    public static QmpVersionInfo Modular { get; } = FromAssembly(typeof(QmpVersionInfo).Assembly);

    /// <summary>The VersionInfo JSON object.</summary>
    public JsonObject ToJson() => new()
    {
        ["qemu"] = new JsonObject { ["micro"] = Micro, ["minor"] = Minor, ["major"] = Major },
        ["package"] = Package,
    };

    private static QmpVersionInfo FromAssembly(Assembly assembly)
    {
        Version version = assembly.GetName().Version ?? new Version(0, 0, 0);
        int micro = Math.Max(version.Build, 0);
        return new QmpVersionInfo(version.Major, version.Minor, micro, $"Modular {version.Major}.{version.Minor}.{micro}");
    }
}
