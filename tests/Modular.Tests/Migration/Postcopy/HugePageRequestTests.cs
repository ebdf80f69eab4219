using System.Buffers;
using System.IO.Pipelines;
using Modular.Core.Memory;
using Modular.Core.Migration.Engine;
using Modular.Core.Migration.Postcopy;
using Modular.Core.Migration.Stream;

namespace Modular.Tests.Migration.Postcopy;

/// <summary>
/// Page requests for RAM on 2 MiB huge pages: a fault anywhere in a huge page requests the whole host
/// page, once, and moves all its target pages together; the source answers with the whole host page,
/// its target pages in order. Real hugetlbfs RAM, a recording fault backend.
/// </summary>
[TestClass]
public sealed class HugePageRequestTests
{
    private const ulong HugePage = HugePageScope.HugePage;
    private const int Target = RamBlock.TargetPageSize;

    [TestMethod]
    public void FaultInsideAHugePage_RequestsTheWholeHostPageOnce()
    {
        using var scope = new HugePageScope();
        scope.Postcopy.Arm();

        FaultOutcome first = scope.Postcopy.OnFault(scope.Block.HostAddress + 0x201234, 0, out RamBlock? block, out ulong offset);
        FaultOutcome second = scope.Postcopy.OnFault(scope.Block.HostAddress + 0x3ff000, 0, out _, out ulong secondOffset);

        Assert.AreEqual(FaultOutcome.NeedsRequest, first);
        Assert.AreSame(scope.Block, block);
        Assert.AreEqual(HugePage, offset, "the request starts at the host page");
        Assert.AreEqual(FaultOutcome.AlreadyRequested, second, "another target page of the same huge page asks nothing more");
        Assert.AreEqual(HugePage, secondOffset);
        Assert.AreEqual(512UL, scope.Map.RequestedCount, "every target page of the host page is requested");
        Assert.AreEqual(PageState.Missing, scope.Map.GetState(511));
        Assert.AreEqual(PageState.Requested, scope.Map.GetState(512));
        Assert.AreEqual(PageState.Requested, scope.Map.GetState(1023));

        ReturnPathMessage named = PostcopyFaultThread.RequestFor(block!, offset, lastRequestedBlock: null);
        Assert.AreEqual(ReturnPathMessage.ReqPagesId(0x200000, 0x200000, "pc.ram"), named);
        Assert.AreEqual(ReturnPathMessage.ReqPages(0x200000, 0x200000), PostcopyFaultThread.RequestFor(block!, offset, lastRequestedBlock: block));
    }

    [TestMethod]
    public void RequestedHostPage_WhenPlaced_IsReceivedWhole_AndALaterFaultOnlyWakes()
    {
        using var scope = new HugePageScope();
        scope.Postcopy.Arm();
        scope.Postcopy.OnFault(scope.Block.HostAddress + 0x200008, 0, out _, out _);
        var assembler = new HostPageAssembler(scope.Postcopy);

        for (ulong offset = HugePage; offset < 2 * HugePage; offset += Target)
        {
            assembler.Add(scope.Block, offset, HugePageScope.Pattern(offset), isZero: false);
        }

        Assert.AreEqual(0UL, scope.Map.RequestedCount);
        Assert.AreEqual(512UL, scope.Map.ReceivedCount);
        Assert.AreEqual(1L, scope.Postcopy.Latency.Count, "one request, one latency sample");

        FaultOutcome late = scope.Postcopy.OnFault(scope.Block.HostAddress + 0x3fffff, 0, out _, out _);
        Assert.AreEqual(FaultOutcome.AlreadyReceived, late);
        CollectionAssert.AreEqual(new[] { (scope.Block.HostAddress + (nint)HugePage, HugePage) }, scope.Backend.Woken, "the whole host page is woken");
    }

    [TestMethod]
    public async Task Source_SendsTheWholeHostPageOfARequestedPage_InOrder()
    {
        using var scope = new HugePageScope();
        scope.Block.CopyIn(HugePage + 7 * Target, HugePageScope.Pattern(7));
        using var saver = new RamSaver(scope.Ram, new MigrationStats());
        saver.MarkAllDirty();
        var output = new ArrayBufferWriter<byte>();
        var writer = new MigrationStreamWriter(output);

        long next = saver.SendHostPage(writer, 0, page: 512 + 300);
        writer.WriteRamEos();

        Assert.AreEqual(1024L, next);
        Assert.AreEqual(512L, saver.DirtyPages, "host page 1 is no longer dirty, host page 0 still is");
        var reader = new MigrationStreamReader(PipeReader.Create(new ReadOnlySequence<byte>(output.WrittenMemory)));
        var offsets = new List<ulong>();
        while (true)
        {
            RamRecordHeader header = await reader.ReadRamRecordHeaderAsync();
            if (header.Kind == RamRecordFlags.Eos)
            {
                break;
            }

            offsets.Add(header.Offset);
            if (header.Kind == RamRecordFlags.Page)
            {
                await reader.ReadRamPageAsync();
            }
            else
            {
                await reader.ReadRamZeroFillAsync();
            }
        }

        CollectionAssert.AreEqual(Enumerable.Range(512, 512).Select(p => (ulong)p * Target).ToList(), offsets, "all 512 target pages of host page 1, in order, nothing between them");
    }
}
