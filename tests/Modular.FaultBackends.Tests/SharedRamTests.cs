using System.Runtime.InteropServices;
using Modular.Abstractions.Faults;
using Modular.Conformance.Faults;
using Modular.FaultBackends.Tests.Support;
using static Modular.FaultBackends.Tests.Support.Faults;
using Modular.FaultBackends.Userfaultfd;

namespace Modular.FaultBackends.Tests;

/// <summary>
/// Shared guest RAM (<see cref="ISharedRamFaultBackend"/>): a memfd mapped twice; the armed mapping
/// faults on every page it does not map (minor: the memory holds the page; missing: it does not),
/// the test writes pages through the other mapping, and <see cref="ISharedRamFaultBackend.MapPages"/>
/// (UFFDIO_CONTINUE) maps them and wakes the waiters. Real kernel; armed memory is only touched natively.
/// </summary>
[TestClass]
public sealed class SharedRamTests
{
    [TestMethod]
    public void SharedRamIsOfferedOnThisKernel()
    {
        using UserfaultfdBackend backend = UserfaultfdBackend.Open();
        ISharedRamFaultBackend shared = backend;
        if (shared.SharedRamUnavailableReason is { } reason)
        {
            Assert.Inconclusive("minor faults on shared memory are not available: " + reason);
        }

        Assert.IsTrue(backend.Capabilities.MinorShmemEnabled);
    }

    [TestMethod]
    public void APageTheMemoryHolds_FaultsUntilMapped_AndShowsWhatWasWrittenThroughTheAlias()
    {
        using UserfaultfdBackend backend = OpenShared();
        using TestMapping mapping = TestMapping.SharedMemfd(8, out nint alias);
        Marshal.Copy(Pattern(3), 0, alias + (3 * Page), Page);
        backend.ArmShared(mapping.Range);

        using NativeToucher toucher = NativeToucher.Read(mapping.Page(3) + 40, 16);
        PageFault fault = Faults.ReadOne(backend);
        Assert.AreEqual(mapping.Page(3), fault.HostAddress & ~(nint)(Page - 1));
        Assert.IsFalse(toucher.Finished(Blocked), "the memory holds the page, but the armed mapping must not show it before it is mapped");

        Assert.AreEqual(1, backend.MapPages(mapping.Page(3), Page));
        Assert.IsTrue(toucher.Finished(Released), "mapping the page must wake the reader");
        CollectionAssert.AreEqual(Pattern(3)[40..56], toucher.Bytes());
    }

    [TestMethod]
    public void APageTheMemoryDoesNotHoldYet_FaultsAsWell_AndIsMappedOnceWritten()
    {
        using UserfaultfdBackend backend = OpenShared();
        using TestMapping mapping = TestMapping.SharedMemfd(4, out nint alias);
        backend.ArmShared(mapping.Range);
        using NativeToucher toucher = NativeToucher.Write(mapping.Page(1) + 8, 4, 0x77);
        PageFault fault = Faults.ReadOne(backend);
        Assert.AreEqual(mapping.Page(1), fault.HostAddress & ~(nint)(Page - 1));
        Assert.IsTrue(fault.IsWrite);
        Assert.IsFalse(toucher.Finished(Blocked));

        Marshal.Copy(Pattern(1), 0, alias + Page, Page);
        Assert.AreEqual(1, backend.MapPages(mapping.Page(1), Page));
        Assert.IsTrue(toucher.Finished(Released));

        byte[] expected = Pattern(1);
        expected.AsSpan(8, 4).Fill(0x77);
        CollectionAssert.AreEqual(expected, NativeToucher.ReadNow(mapping.Page(1), Page), "the write lands on the page written through the alias");
        byte[] throughAlias = new byte[Page];
        Marshal.Copy(alias + Page, throughAlias, 0, Page);
        CollectionAssert.AreEqual(expected, throughAlias, "both mappings show the same memory");
    }

    [TestMethod]
    public void MappingARunSkipsPagesAlreadyMapped_WakesTheirWaiters_AndKeepsTheirContents()
    {
        using UserfaultfdBackend backend = OpenShared();
        using TestMapping mapping = TestMapping.SharedMemfd(8, out nint alias);
        for (int page = 0; page < 8; page++)
        {
            Marshal.Copy(Pattern(page), 0, alias + (page * Page), Page);
        }

        backend.ArmShared(mapping.Range);
        Assert.AreEqual(1, backend.MapPages(mapping.Page(2), Page));
        using (NativeToucher writer = NativeToucher.Write(mapping.Page(2), 16, 0x11))
        {
            Assert.IsTrue(writer.Finished(Released), "page 2 is mapped: writing it does not fault");
        }

        using NativeToucher waiter = NativeToucher.Read(mapping.Page(5), 8);
        Assert.AreEqual(mapping.Page(5), Faults.ReadOne(backend).HostAddress & ~(nint)(Page - 1));

        Assert.AreEqual(5, backend.MapPages(mapping.Page(1), 6 * Page), "pages 1 and 3 to 6 are mapped; page 2 was already");
        Assert.IsTrue(waiter.Finished(Released));
        CollectionAssert.AreEqual(Pattern(5)[..8], waiter.Bytes());
        byte[] two = NativeToucher.ReadNow(mapping.Page(2), 32);
        CollectionAssert.AreEqual(Enumerable.Repeat((byte)0x11, 16).Concat(Pattern(2)[16..32]).ToArray(), two, "a mapped page is left as the guest changed it");
        Assert.AreEqual(0, backend.MapPages(mapping.Page(1), 6 * Page), "all mapped: nothing more to map, and no error");
    }

    [TestMethod]
    public void ArmingAPrivateRangeAsShared_IsRefusedWithTheReason()
    {
        using UserfaultfdBackend backend = OpenShared();
        using TestMapping anonymous = TestMapping.Anonymous(2);
        // Minor mode needs shared memory: an anonymous private range is refused with the reason.
        FaultBackendException error = Assert.ThrowsExactly<FaultBackendException>(() => backend.ArmShared(anonymous.Range));
        StringAssert.Contains(error.Message, "UFFDIO_REGISTER");
    }

    private static UserfaultfdBackend OpenShared()
    {
        UserfaultfdBackend backend = UserfaultfdBackend.Open();
        if (((ISharedRamFaultBackend)backend).SharedRamUnavailableReason is { } reason)
        {
            backend.Dispose();
            Assert.Inconclusive("minor faults on shared memory are not available: " + reason);
        }

        return backend;
    }


    private static byte[] Pattern(int seed)
    {
        byte[] page = new byte[Page];
        for (int i = 0; i < Page; i++)
        {
            page[i] = (byte)((seed * 31) + (i % 251) + 1);
        }

        return page;
    }
}
