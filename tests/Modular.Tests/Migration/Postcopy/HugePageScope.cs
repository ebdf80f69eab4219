using Modular.Core.Memory;
using Modular.Core.Migration.Postcopy;
using Modular.Tests.Support;

namespace Modular.Tests.Migration.Postcopy;

/// <summary>
/// 4 MiB of guest RAM on two real 2 MiB hugetlbfs pages (reserved for the test), postcopy's RAM over
/// a <see cref="RecordingFaultBackend"/>. Disposes in reverse order, giving the huge pages back.
/// </summary>
internal sealed class HugePageScope : IDisposable
{
    public const ulong HugePage = 2UL << 20;

    private readonly HugePageReservation _reservation;

    public HugePageScope()
    {
        _reservation = HugePageReservation.Reserve(4);
        Ram = GuestRam.Create(2 * HugePage, GuestRamBacking.HugeTlb2M);
        Postcopy = new PostcopyRam(Ram, Backend);
    }

    public GuestRam Ram { get; }

    public RamBlock Block => Ram.Blocks[0];

    public RecordingFaultBackend Backend { get; } = new();

    public PostcopyRam Postcopy { get; }

    public PageStateMap Map => Postcopy.Map(0);

    /// <summary>A non-zero target page whose bytes depend on its offset.</summary>
    public static byte[] Pattern(ulong offset)
    {
        var page = new byte[RamBlock.TargetPageSize];
        for (int i = 0; i < page.Length; i++)
        {
            page[i] = (byte)((offset / RamBlock.TargetPageSize * 31) + (ulong)i % 251 + 1);
        }

        return page;
    }

    public void Dispose()
    {
        Postcopy.Dispose();
        Ram.Dispose();
        _reservation.Dispose();
    }
}
