using Modular.Conformance.Faults;
using System.Globalization;
using Modular.Abstractions.Faults;
using Modular.FaultBackends.Tests.Support;
using static Modular.FaultBackends.Tests.Support.Faults;
using Modular.FaultBackends.Userfaultfd;

namespace Modular.FaultBackends.Tests;

/// <summary>
/// 2 MiB hugetlbfs pages. The host has no huge pages reserved by default, so the test reserves a
/// few through /proc/sys/vm/nr_hugepages (root) and restores the old value afterwards.
/// </summary>
[TestClass]
public sealed class HugetlbfsTests
{
    private const string NrHugepages = "/proc/sys/vm/nr_hugepages";
    private const int Huge = 2 * 1024 * 1024;

    [TestMethod]
    public void HugePagesFaultAndArePlacedWholeIncludingZeroPages()
    {
        string? previous = Reserve(extra: 2, out string? problem);
        if (previous is null)
        {
            Assert.Inconclusive(problem ?? "huge pages unavailable");
        }
        try
        {
            TestMapping? mapping = TestMapping.TryHuge(2, out int errno);
            if (mapping is null)
            {
                Assert.Inconclusive($"mmap(MAP_HUGETLB) of two 2 MiB pages failed (errno {errno}) even after reserving huge pages.");
            }
            using (mapping)
            using (UserfaultfdBackend backend = UserfaultfdBackend.Open())
            {
                backend.Arm(mapping.Range);
                using NativeToucher toucher = NativeToucher.Read(mapping.Page(1) + Huge / 2 + 3, 5);
                using Timer watchdog = new(_ => backend.Shutdown(), null, TimeSpan.FromSeconds(10), Timeout.InfiniteTimeSpan);
                PageFault[] faults = new PageFault[1];
                Assert.AreEqual(1, backend.ReadFaults(faults), "no fault arrived within 10 s");
                Assert.AreEqual(mapping.Page(1), faults[0].HostAddress & ~(nint)(Huge - 1));
                Assert.AreEqual(toucher.ThreadId, faults[0].ThreadId);

                byte[] contents = new byte[Huge];
                for (int i = 0; i < contents.Length; i++)
                {
                    contents[i] = (byte)(i ^ (i >> 12));
                }
                Assert.AreEqual(PlaceResult.Placed, backend.PlacePage(mapping.Page(1), contents));
                Assert.IsTrue(toucher.Finished(Released), "placing the huge page must wake the toucher");
                CollectionAssert.AreEqual(contents[(Huge / 2 + 3)..(Huge / 2 + 8)], toucher.Bytes());
                Assert.AreEqual(PlaceResult.AlreadyPresent, backend.PlacePage(mapping.Page(1), new byte[Huge]));

                // hugetlbfs has no UFFDIO_ZEROPAGE: the backend copies a zero huge page instead.
                Assert.AreEqual(PlaceResult.Placed, backend.PlaceZeroPage(mapping.Page(0), Huge));
                Assert.AreEqual(PlaceResult.AlreadyPresent, backend.PlaceZeroPage(mapping.Page(0), Huge));
                CollectionAssert.AreEqual(new byte[64], NativeToucher.ReadNow(mapping.Page(0) + Huge - 64, 64));
            }
        }
        finally
        {
            File.WriteAllText(NrHugepages, previous);
        }
    }

    /// <summary>Raises nr_hugepages by <paramref name="extra"/>; returns the old value, or null and why not.</summary>
    private static string? Reserve(int extra, out string? problem)
    {
        problem = null;
        try
        {
            string previous = File.ReadAllText(NrHugepages).Trim();
            int wanted = int.Parse(previous, CultureInfo.InvariantCulture) + extra;
            File.WriteAllText(NrHugepages, wanted.ToString(CultureInfo.InvariantCulture));
            int got = int.Parse(File.ReadAllText(NrHugepages).Trim(), CultureInfo.InvariantCulture);
            if (got < wanted)
            {
                File.WriteAllText(NrHugepages, previous);
                problem = $"Could reserve only {got} of {wanted} 2 MiB huge pages through {NrHugepages} (memory too fragmented?).";
                return null;
            }
            return previous;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            problem = $"Cannot reserve 2 MiB huge pages through {NrHugepages}: {e.Message} (needs root).";
            return null;
        }
    }
}
