using Modular.Conformance.Faults;
using Modular.Abstractions.Faults;
using Modular.Abstractions.Plugins;
using Modular.FaultBackends.Tests.Support;
using static Modular.FaultBackends.Tests.Support.Faults;
using Modular.FaultBackends.Userfaultfd;

namespace Modular.FaultBackends.Tests;

/// <summary>
/// The userfaultfd backend against the real kernel. Armed memory is only ever touched through
/// native memcpy (NativeToucher), never through a managed pointer (DESIGN.md §5).
/// </summary>
[TestClass]
public sealed class UserfaultfdBackendTests
{
    [TestMethod]
    public void ProbeIsUsableHere()
    {
        PluginAvailability availability = new UserfaultfdBackendFactory().Probe();
        Assert.IsTrue(availability.IsUsable, availability.Reason);
        Assert.IsNull(availability.Reason);
    }

    [TestMethod]
    public void FactoryIsExportedAsUserfaultfd()
    {
        object[] attributes = typeof(UserfaultfdBackendFactory).GetCustomAttributes(typeof(FaultBackendMetadataAttribute), false);
        Assert.HasCount(1, attributes);
        Assert.AreEqual("userfaultfd", ((FaultBackendMetadataAttribute)attributes[0]).Name);
        Assert.AreEqual(typeof(IFaultBackendFactory), ((FaultBackendMetadataAttribute)attributes[0]).ContractType);
    }

    [TestMethod]
    [DataRow("syscall")]
    [DataRow("device")]
    public void BothOpenPathsWorkAndEnableThreadIds(string pathName)
    {
        UffdOpenPath path = pathName == "device" ? UffdOpenPath.Device : UffdOpenPath.Syscall;
        using UserfaultfdBackend backend = UserfaultfdBackend.Open(path);
        Assert.AreEqual(path, backend.Capabilities.Path);
        Assert.IsTrue(backend.Capabilities.ThreadIdEnabled, "this kernel (6.x) offers UFFD_FEATURE_THREAD_ID");
        Assert.IsTrue(backend.Capabilities.HugetlbfsSupported, "this kernel offers UFFD_FEATURE_MISSING_HUGETLBFS");
    }

    [TestMethod]
    public void NativeReadOfMissingPageIsDeliveredAndPlacementWakesIt()
    {
        using UserfaultfdBackend backend = UserfaultfdBackend.Open();
        using TestMapping mapping = TestMapping.Anonymous(16);
        backend.Arm(mapping.Range);

        using NativeToucher toucher = NativeToucher.Read(mapping.Page(5) + 100, 8);
        PageFault fault = Faults.ReadOne(backend);

        Assert.AreEqual(mapping.Page(5), fault.HostAddress & ~(nint)(Page - 1));
        Assert.AreEqual(toucher.ThreadId, fault.ThreadId);
        Assert.IsFalse(fault.IsWrite);
        Assert.IsFalse(toucher.Finished(Blocked), "the touch must wait for the page");

        byte[] contents = Pattern(seed: 5);
        Assert.AreEqual(PlaceResult.Placed, backend.PlacePage(mapping.Page(5), contents));
        Assert.IsTrue(toucher.Finished(Released), "placing the page must wake the toucher");
        CollectionAssert.AreEqual(contents[100..108], toucher.Bytes());
    }

    [TestMethod]
    public void NativeWriteIsDeliveredAsAWriteFault()
    {
        using UserfaultfdBackend backend = UserfaultfdBackend.Open();
        using TestMapping mapping = TestMapping.Anonymous(4);
        backend.Arm(mapping.Range);

        using NativeToucher toucher = NativeToucher.Write(mapping.Page(2) + 10, 4, 0x5A);
        PageFault fault = Faults.ReadOne(backend);

        Assert.AreEqual(mapping.Page(2), fault.HostAddress & ~(nint)(Page - 1));
        Assert.IsTrue(fault.IsWrite);
        Assert.AreEqual(PlaceResult.Placed, backend.PlaceZeroPage(mapping.Page(2), Page));
        Assert.IsTrue(toucher.Finished(Released));
        byte[] now = NativeToucher.ReadNow(mapping.Page(2), 16);
        CollectionAssert.AreEqual(new byte[] { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x5A, 0x5A, 0x5A, 0x5A, 0, 0 }, now);
    }

    [TestMethod]
    public void PlacingOnePageWakesOnlyItsWaiter()
    {
        using UserfaultfdBackend backend = UserfaultfdBackend.Open();
        using TestMapping mapping = TestMapping.Anonymous(8);
        backend.Arm(mapping.Range);

        using NativeToucher first = NativeToucher.Read(mapping.Page(1), 16);
        using NativeToucher second = NativeToucher.Read(mapping.Page(6), 16);
        HashSet<nint> faulted = new() { Faults.ReadOne(backend).HostAddress, Faults.ReadOne(backend).HostAddress };
        CollectionAssert.AreEquivalent(new[] { mapping.Page(1), mapping.Page(6) }, faulted.ToArray());

        Assert.AreEqual(PlaceResult.Placed, backend.PlacePage(mapping.Page(6), Pattern(seed: 6)));
        Assert.IsTrue(second.Finished(Released));
        Assert.IsFalse(first.Finished(Blocked), "page 1 is still missing; its reader must still wait");

        Assert.AreEqual(PlaceResult.Placed, backend.PlacePage(mapping.Page(1), Pattern(seed: 1)));
        Assert.IsTrue(first.Finished(Released));
        CollectionAssert.AreEqual(Pattern(seed: 1)[..16], first.Bytes());
        CollectionAssert.AreEqual(Pattern(seed: 6)[..16], second.Bytes());
    }

    [TestMethod]
    public void PlacingAPresentPageReportsAlreadyPresentAndKeepsTheFirstContents()
    {
        using UserfaultfdBackend backend = UserfaultfdBackend.Open();
        using TestMapping mapping = TestMapping.Anonymous(2);
        backend.Arm(mapping.Range);

        Assert.AreEqual(PlaceResult.Placed, backend.PlacePage(mapping.Page(0), Pattern(seed: 1)));
        Assert.AreEqual(PlaceResult.AlreadyPresent, backend.PlacePage(mapping.Page(0), Pattern(seed: 2)));
        Assert.AreEqual(PlaceResult.AlreadyPresent, backend.PlaceZeroPage(mapping.Page(0), Page));
        CollectionAssert.AreEqual(Pattern(seed: 1), NativeToucher.ReadNow(mapping.Page(0), Page));
    }

    [TestMethod]
    public void ZeroPageIsPlacedAndAPresentPageIsNotZeroed()
    {
        using UserfaultfdBackend backend = UserfaultfdBackend.Open();
        using TestMapping mapping = TestMapping.Anonymous(2);
        backend.Arm(mapping.Range);

        using NativeToucher toucher = NativeToucher.Read(mapping.Page(1), Page);
        Assert.AreEqual(mapping.Page(1), Faults.ReadOne(backend).HostAddress & ~(nint)(Page - 1));
        Assert.AreEqual(PlaceResult.Placed, backend.PlaceZeroPage(mapping.Page(1), Page));
        Assert.IsTrue(toucher.Finished(Released));
        CollectionAssert.AreEqual(new byte[Page], toucher.Bytes());
        Assert.AreEqual(PlaceResult.AlreadyPresent, backend.PlaceZeroPage(mapping.Page(1), Page));
    }

    [TestMethod]
    public void WakeReleasesAWaiterWhosePageIsPresent()
    {
        using UserfaultfdBackend backend = UserfaultfdBackend.Open();
        using TestMapping mapping = TestMapping.Anonymous(2);
        backend.Arm(mapping.Range);

        using NativeToucher toucher = NativeToucher.Read(mapping.Page(0), 8);
        Faults.ReadOne(backend);
        // Placing with the copy and waking are separate here: a placement that found the page
        // already there (EEXIST) must still wake, which is what AlreadyPresent does.
        Assert.AreEqual(PlaceResult.Placed, backend.PlacePage(mapping.Page(0), Pattern(seed: 3)));
        backend.Wake(mapping.Page(0), Page);
        Assert.IsTrue(toucher.Finished(Released));
        CollectionAssert.AreEqual(Pattern(seed: 3)[..8], toucher.Bytes());
    }

    [TestMethod]
    public void ShutdownUnblocksReadFaults()
    {
        using UserfaultfdBackend backend = UserfaultfdBackend.Open();
        int result = -1;
        Thread reader = new(() => result = backend.ReadFaults(new PageFault[4])) { IsBackground = true };
        reader.Start();
        Assert.IsFalse(reader.Join(Blocked), "ReadFaults must block while there are no faults");
        backend.Shutdown();
        Assert.IsTrue(reader.Join(Released), "Shutdown must unblock ReadFaults");
        Assert.AreEqual(0, result);
        backend.Shutdown();
        Assert.AreEqual(0, backend.ReadFaults(new PageFault[1]), "ReadFaults returns 0 after shutdown");
    }

    [TestMethod]
    public void DisarmReleasesAWaiter()
    {
        using UserfaultfdBackend backend = UserfaultfdBackend.Open();
        using TestMapping mapping = TestMapping.Anonymous(4);
        backend.Arm(mapping.Range);

        using NativeToucher toucher = NativeToucher.Read(mapping.Page(3), 8);
        Faults.ReadOne(backend);
        Assert.IsFalse(toucher.Finished(Blocked));
        backend.Disarm(mapping.Range);
        Assert.IsTrue(toucher.Finished(Released), "disarming must wake the waiter");
        CollectionAssert.AreEqual(new byte[8], toucher.Bytes(), "after disarm the page is ordinary anonymous memory");

        ArgumentException error = Assert.ThrowsExactly<ArgumentException>(() => backend.Disarm(mapping.Range));
        StringAssert.Contains(error.Message, $"0x{mapping.Address:x} (+0x4000) was never armed on this userfaultfd");
    }

    [TestMethod]
    public void DisposeClosesBothDescriptorsAndReleasesWaiters()
    {
        int before = OpenDescriptorCount();
        UserfaultfdBackend backend = UserfaultfdBackend.Open();
        Assert.AreEqual(before + 2, OpenDescriptorCount(), "the userfaultfd and its shutdown eventfd");
        using TestMapping mapping = TestMapping.Anonymous(2);
        backend.Arm(mapping.Range);
        using NativeToucher toucher = NativeToucher.Read(mapping.Page(0), 8);
        Faults.ReadOne(backend);

        backend.Dispose();
        Assert.IsTrue(toucher.Finished(Released), "closing the userfaultfd must wake the waiter");
        Assert.AreEqual(before, OpenDescriptorCount());
        backend.Dispose();
    }

    [TestMethod]
    public void ArmingUnmappedMemoryIsRefusedWithTheAddress()
    {
        using UserfaultfdBackend backend = UserfaultfdBackend.Open();
        // Starts at address 0, below vm.mmap_min_addr, where nothing is ever mapped. A mapping unmapped just
        // before could be mapped again by another thread first (a CI run armed one that way).
        var range = new HostRamRange(0, 0x2000, 4096);
        FaultBackendException error = Assert.ThrowsExactly<FaultBackendException>(() => backend.Arm(range));
        StringAssert.StartsWith(error.Message, $"userfaultfd refused to arm guest RAM at 0x{range.HostAddress:x} (+0x2000, 4096-byte pages)");
    }

    [TestMethod]
    public void MisalignedRangeIsRefused()
    {
        using UserfaultfdBackend backend = UserfaultfdBackend.Open();
        ArgumentException error = Assert.ThrowsExactly<ArgumentException>(() => backend.Arm(new HostRamRange(0x1000, 0x1800, 4096)));
        StringAssert.StartsWith(error.Message, "Cannot arm host range 0x1000 (+0x1800, page size 4096): start and length must be non-zero multiples");
    }

    [TestMethod]
    public void OpenFailureMessagesSayWhatIsMissing()
    {
        string denied = UserfaultfdOpener.DescribeOpenFailure(1, 13, "0");
        Assert.AreEqual(
            "userfaultfd is not usable, so postcopy cannot run on this host: userfaultfd(2) was refused with EPERM: " +
            "vm.unprivileged_userfaultfd = 0, so only a process with CAP_SYS_PTRACE may call it; run Modular with CAP_SYS_PTRACE " +
            "or set `sysctl -w vm.unprivileged_userfaultfd=1` (UFFD_USER_MODE_ONLY would be allowed, but KVM vCPUs fault in kernel mode, " +
            "so Modular cannot use it); and /dev/userfaultfd could not be opened (EACCES (Permission denied)): this user needs read-write " +
            "permission on it (for example a group with rw access). Use precopy only, or fix one of these.",
            denied);
        string missing = UserfaultfdOpener.DescribeOpenFailure(38, 2, null);
        StringAssert.Contains(missing, "this kernel has no userfaultfd(2) system call (ENOSYS: built without CONFIG_USERFAULTFD, or blocked by a seccomp filter)");
        StringAssert.Contains(missing, "/dev/userfaultfd does not exist (it needs Linux 6.1 or newer)");
    }

    [TestMethod]
    public void HotPathAllocatesNothing()
    {
        using UserfaultfdBackend backend = UserfaultfdBackend.Open();
        using TestMapping mapping = TestMapping.Anonymous(8);
        backend.Arm(mapping.Range);
        byte[] contents = Pattern(seed: 9);
        Span<PageFault> faults = stackalloc PageFault[4];

        // Round 0 warms up (JIT, first-call stubs); round 1 on pages 4..7 is measured.
        long allocated = 0;
        for (int round = 0; round < 2; round++)
        {
            int first = round * 4;
            using NativeToucher toucher = NativeToucher.Read(mapping.Page(first), 8);
            using Timer watchdog = new(_ => backend.Shutdown(), null, TimeSpan.FromSeconds(10), Timeout.InfiniteTimeSpan);
            long before = GC.GetAllocatedBytesForCurrentThread();
            int count = backend.ReadFaults(faults);
            PlaceResult placed = backend.PlacePage(mapping.Page(first), contents);
            PlaceResult again = backend.PlacePage(mapping.Page(first), contents);
            PlaceResult zero = backend.PlaceZeroPage(mapping.Page(first + 1), Page);
            backend.Wake(mapping.Page(first), Page);
            allocated = GC.GetAllocatedBytesForCurrentThread() - before;
            Assert.AreEqual(1, count);
            Assert.AreEqual((PlaceResult.Placed, PlaceResult.AlreadyPresent, PlaceResult.Placed), (placed, again, zero));
            Assert.IsTrue(toucher.Finished(Released));
        }
        Assert.AreEqual(0L, allocated, "ReadFaults, PlacePage, PlaceZeroPage and Wake must not allocate managed memory");
    }

    [TestMethod]
    public void RoundTripMeasurementResolvesEveryFault()
    {
        // Not a timed test: it checks that the measurement runs to completion and is well formed.
        FaultLatencyStats stats = UffdRoundTrip.Measure(64);
        Assert.AreEqual(64, stats.Iterations);
        Assert.IsGreaterThan(TimeSpan.Zero, stats.Min);
        Assert.IsTrue(stats.Min <= stats.Median && stats.Median <= stats.P99 && stats.P99 <= stats.Max, stats.ToString());
    }


    private static byte[] Pattern(int seed)
    {
        byte[] page = new byte[Page];
        for (int i = 0; i < page.Length; i++)
        {
            page[i] = (byte)(i * 7 + seed * 31 + (i >> 8));
        }
        return page;
    }

    private static int OpenDescriptorCount() => Directory.GetFileSystemEntries("/proc/self/fd").Length;
}
