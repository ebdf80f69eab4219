using System.Globalization;

namespace Modular.Tests.Support;

/// <summary>
/// Reserves 2 MiB huge pages for a test by raising /proc/sys/vm/nr_hugepages (root only), and puts
/// the old value back on dispose. A test that cannot reserve them ends inconclusive, saying why.
/// </summary>
internal sealed class HugePageReservation : IDisposable
{
    private const string NrHugepages = "/proc/sys/vm/nr_hugepages";
    private const string FreeHugepages = "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages";

    private readonly long _previous;

    private HugePageReservation(long previous) => _previous = previous;

    /// <summary>Makes at least <paramref name="pages"/> more 2 MiB pages free than are free now.</summary>
    /// <param name="pages">How many huge pages the test needs (with some slack).</param>
    public static HugePageReservation Reserve(long pages)
    {
        if (!File.Exists(NrHugepages) || !File.Exists(FreeHugepages))
        {
            Assert.Inconclusive($"This host has no 2 MiB huge pages ({NrHugepages} or {FreeHugepages} is missing).");
        }

        long previous = Read(NrHugepages);
        long free = Read(FreeHugepages);
        try
        {
            File.WriteAllText(NrHugepages, (previous + pages).ToString(CultureInfo.InvariantCulture));
        }
        catch (Exception ex) when (ex is UnauthorizedAccessException or IOException)
        {
            Assert.Inconclusive($"Cannot reserve {pages} huge pages by writing {NrHugepages} ({ex.Message}); run the tests as root or reserve them beforehand.");
        }

        var reservation = new HugePageReservation(previous);
        long nowFree = Read(FreeHugepages);
        if (nowFree < free + pages)
        {
            reservation.Dispose();
            Assert.Inconclusive($"Asked the kernel for {pages} more huge pages, but only {nowFree - free} could be reserved (memory too fragmented or too small).");
        }

        return reservation;
    }

    /// <summary>Puts nr_hugepages back (pages still in use are freed by the kernel when released).</summary>
    public void Dispose()
    {
        try
        {
            File.WriteAllText(NrHugepages, _previous.ToString(CultureInfo.InvariantCulture));
        }
        catch (IOException)
        {
            // Best effort: the pool then stays larger until the next reservation restores it.
        }
    }

    private static long Read(string path) => long.Parse(File.ReadAllText(path).Trim(), CultureInfo.InvariantCulture);
}
