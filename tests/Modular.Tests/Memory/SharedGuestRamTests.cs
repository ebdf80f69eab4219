using Modular.Core.Config;
using Modular.Core.Machine;
using Modular.Core.Memory;
using static Modular.Tests.Support.TestPages;

namespace Modular.Tests.Memory;

/// <summary>
/// Guest RAM in shared memory (<see cref="GuestRamBacking.SharedMemfd"/>, machine.memory-backend
/// memfd): one memory seen through the guest's mapping and the VMM's second mapping; what dropping
/// and unmapping mean there; which backing a machine gets.
/// </summary>
[TestClass]
public sealed class SharedGuestRamTests
{
    private const int Page = RamBlock.TargetPageSize;

    [TestMethod]
    public void APageWrittenThroughTheSecondMapping_IsWhatTheGuestsMappingShows()
    {
        using GuestRam ram = GuestRam.Create(1 << 20, GuestRamBacking.SharedMemfd);
        RamBlock block = ram.Blocks[0];
        Assert.IsTrue(block.IsShared);
        Assert.AreEqual((ulong)Page, block.HostPageSize);

        block.WriteThroughAlias(3 * Page, Pattern(3));
        CollectionAssert.AreEqual(Pattern(3), Read(block, 3));

        block.CopyIn(5 * Page, Pattern(5));
        block.WriteThroughAlias(5 * Page, default);
        Assert.IsTrue(block.IsZeroPage(5 * Page), "an empty page writes zeros");

        Assert.ThrowsExactly<ArgumentException>(() => block.WriteThroughAlias(6 * Page, new byte[100]));
        Assert.ThrowsExactly<ArgumentOutOfRangeException>(() => block.WriteThroughAlias(1 << 20, Pattern(0)));
    }

    [TestMethod]
    public void UnmapKeepsSharedContents_DiscardDropsThem()
    {
        using GuestRam ram = GuestRam.Create(1 << 20, GuestRamBacking.SharedMemfd);
        RamBlock block = ram.Blocks[0];
        block.CopyIn(2 * Page, Pattern(2));
        block.CopyIn(4 * Page, Pattern(4));

        block.Unmap(2 * Page, Page);
        CollectionAssert.AreEqual(Pattern(2), Read(block, 2), "only the guest's mapping lost the page; the memory keeps it");

        block.Discard(4 * Page, Page);
        Assert.IsTrue(block.IsZeroPage(4 * Page), "discarding shared memory frees it: it reads as zero");
        CollectionAssert.AreEqual(Pattern(2), Read(block, 2), "discard stays in its range");
    }

    [TestMethod]
    public void OnPrivateMemory_UnmapDropsTheContents_AndThereIsNoSecondMapping()
    {
        using GuestRam ram = GuestRam.Create(1 << 20);
        RamBlock block = ram.Blocks[0];
        Assert.IsFalse(block.IsShared);
        block.CopyIn(2 * Page, Pattern(2));
        block.Unmap(2 * Page, Page);
        Assert.IsTrue(block.IsZeroPage(2 * Page));

        InvalidOperationException error = Assert.ThrowsExactly<InvalidOperationException>(() => block.WriteThroughAlias(0, Pattern(0)));
        StringAssert.Contains(error.Message, "RAM block pc.ram is not shared memory");
    }

    [TestMethod]
    public void PopulatingOnlyTheMemory_KeepsContentsAndLeavesThemReadable()
    {
        using GuestRam ram = GuestRam.Create(4 << 20, GuestRamBacking.SharedMemfd);
        RamBlock block = ram.Blocks[0];
        block.CopyIn(7 * Page, Pattern(7));
        block.Unmap(0, block.Size);

        Assert.IsTrue(block.Populate(memoryOnly: true));

        CollectionAssert.AreEqual(Pattern(7), Read(block, 7));
        Assert.IsTrue(block.IsZeroPage(8 * Page));
    }

    [TestMethod]
    [DataRow("auto", false, MachineStartMode.Incoming, GuestRamBacking.SharedMemfd)]
    [DataRow("auto", false, MachineStartMode.Boot, GuestRamBacking.Anonymous)]
    [DataRow("anonymous", false, MachineStartMode.Incoming, GuestRamBacking.Anonymous)]
    [DataRow("memfd", false, MachineStartMode.Boot, GuestRamBacking.SharedMemfd)]
    [DataRow("memfd", true, MachineStartMode.Incoming, GuestRamBacking.HugeTlb2M)]
    public void TheBackingFollowsTheConfigAndTheStartMode(string backend, bool hugepages, MachineStartMode mode, GuestRamBacking expected)
    {
        MachineConfig machine = ConfigLoader.Load(null, [new("machine.memory-backend", backend), new("machine.hugepages", hugepages ? "true" : "false")]).Machine;
        Assert.AreEqual(expected, VirtualMachine.BackingFor(machine, mode));
    }

    [TestMethod]
    public void AnUnknownMemoryBackendIsAConfigErrorListingTheChoices()
    {
        ConfigException error = Assert.ThrowsExactly<ConfigException>(() => ConfigLoader.Load(null, [new("machine.memory-backend", "tmpfs")]));
        Assert.AreEqual("machine.memory-backend: expected one of auto, anonymous, memfd, found 'tmpfs'.", error.Errors.Single());
    }
}
