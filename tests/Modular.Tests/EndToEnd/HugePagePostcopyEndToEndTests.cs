using Modular.Tests.Support;

namespace Modular.Tests.EndToEnd;

/// <summary>
/// Postcopy of guest RAM on 2 MiB hugetlbfs pages (both sides: <c>machine.hugepages</c>) between two
/// real <c>modular run</c> processes with the KVM A/B guest (256 MiB): faults request whole huge
/// pages, the source sends them whole, the destination assembles and places each with one
/// UFFDIO_COPY. The same checks as <see cref="PostcopyEndToEndTests"/>: completed, the A/B RAM check
/// passes on the destination, the guest keeps printing there, and right after the start the
/// destination asked for pages. The test reserves the huge pages itself (root) and gives the old
/// nr_hugepages back afterwards.
/// </summary>
[TestClass]
public sealed class HugePagePostcopyEndToEndTests
{
    // 256 MiB is 128 huge pages per process, two processes, and a little slack.
    private const long PagesToReserve = 2 * 128 + 8;

    private static readonly string[] HugePages = ["--set", "machine.hugepages=true"];

    public TestContext TestContext { get; set; } = null!;

    [TestMethod]
    public async Task Tcp_HugePages_PostcopyRightAfterStart()
    {
        using HugePageReservation reservation = HugePageReservation.Reserve(PagesToReserve);
        await PostcopyEndToEndTests.RunAsync(TestContext, "tcp:127.0.0.1:0", precopyPasses: 0, HugePages);
    }

    [TestMethod]
    public async Task Tcp_HugePages_PostcopyWithPreemptChannelRightAfterStart()
    {
        // Requested huge pages travel whole on channel 1 (and again on the main connection).
        using HugePageReservation reservation = HugePageReservation.Reserve(PagesToReserve);
        await PostcopyEndToEndTests.RunAsync(TestContext, "tcp:127.0.0.1:0", precopyPasses: 0, HugePages, preempt: true);
    }

    [TestMethod]
    public async Task Unix_HugePages_PostcopyAfterTwoPrecopyPasses()
    {
        // After precopy passes the destination holds huge pages whose target pages were partly sent
        // and partly dirty: the discards must drop them whole, or their resent pages could not be placed.
        using HugePageReservation reservation = HugePageReservation.Reserve(PagesToReserve);
        await PostcopyEndToEndTests.RunAsync(TestContext, "unix:" + Path.Combine(Path.GetTempPath(), "modular-hpc-" + Guid.NewGuid().ToString("N")[..8] + ".sock"), precopyPasses: 2, HugePages);
    }
}
