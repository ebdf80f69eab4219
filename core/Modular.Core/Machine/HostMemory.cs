using System.Globalization;
using Modular.Core.Config;

namespace Modular.Core.Machine;

/// <summary>
/// How much memory the host can give a guest: RAM plus swap, from /proc/meminfo. Guest RAM is
/// mapped with MAP_NORESERVE, so mmap accepts sizes far beyond that (up to the address space); the
/// guest would then be killed by the OOM killer once it touched enough pages (the A/B guest touches
/// every page). Refusing such a size up front is the clear error instead.
/// </summary>
internal static class HostMemory
{
    private const string MeminfoPath = "/proc/meminfo";

    /// <summary>MemTotal + SwapTotal in bytes, or null when /proc/meminfo cannot be read.</summary>
    internal static (ulong Ram, ulong Swap)? Read(string path = MeminfoPath)
    {
        string[] lines;
        try
        {
            lines = File.ReadAllLines(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }

        ulong? ram = Field(lines, "MemTotal:");
        ulong? swap = Field(lines, "SwapTotal:");
        return ram is null ? null : (ram.Value, swap ?? 0);
    }

    /// <summary>
    /// Throws when <paramref name="guestRam"/> exceeds what the host has (RAM plus swap).
    /// </summary>
    /// <exception cref="MachineCreationException">The guest wants more memory than the host has; names both sizes.</exception>
    internal static void CheckFits(ulong guestRam, (ulong Ram, ulong Swap)? host)
    {
        if (host is not { } h || guestRam <= h.Ram + h.Swap)
        {
            return;
        }

        throw new MachineCreationException(
            $"machine.memory: the host cannot give {ByteSize.Format(guestRam)} of guest RAM: it has {Describe(h.Ram)} of memory and {Describe(h.Swap)} of swap " +
            $"(MemTotal and SwapTotal in {MeminfoPath}), and the guest may touch every page. Choose a smaller size with --memory or machine.memory.");
    }

    private static string Describe(ulong bytes) => bytes >= 1UL << 30
        ? (bytes / (double)(1UL << 30)).ToString("0.#", CultureInfo.InvariantCulture) + " GiB"
        : (bytes >> 20).ToString(CultureInfo.InvariantCulture) + " MiB";

    private static ulong? Field(string[] lines, string name)
    {
        foreach (string line in lines)
        {
            if (!line.StartsWith(name, StringComparison.Ordinal))
            {
                continue;
            }

            string[] parts = line[name.Length..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length >= 1 && ulong.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out ulong value))
            {
                return parts.Length >= 2 && parts[1] == "kB" ? value * 1024 : value;
            }
        }

        return null;
    }
}
