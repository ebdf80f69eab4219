using Modular.Core.Memory;

namespace Modular.Tests.Support;

/// <summary>Page contents for RAM tests: a pattern that differs per seed, and reading a page back natively.</summary>
internal static class TestPages
{
    private const int Page = RamBlock.TargetPageSize;

    /// <summary>One target page whose bytes depend on <paramref name="seed"/> (never all zero).</summary>
    public static byte[] Pattern(int seed)
    {
        byte[] page = new byte[Page];
        for (int i = 0; i < Page; i++)
        {
            page[i] = (byte)((seed * 29) + (i % 233) + 1);
        }

        return page;
    }

    /// <summary>Target page <paramref name="page"/> of <paramref name="block"/>, copied out natively (it may fault and wait).</summary>
    public static byte[] Read(RamBlock block, int page)
    {
        byte[] back = new byte[Page];
        block.CopyOut((ulong)page * Page, back);
        return back;
    }
}
