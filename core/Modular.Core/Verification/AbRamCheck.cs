using System.Globalization;
using Modular.Abstractions.Memory;
using Modular.Core.Boot;

namespace Modular.Core.Verification;

/// <summary>What <see cref="AbRamCheck"/> found.</summary>
/// <param name="Passed">True when the RAM is in a state the A/B guest can leave it in.</param>
/// <param name="PagesChecked">How many pages' first bytes were read.</param>
/// <param name="FirstByte">The first byte of the first page checked.</param>
/// <param name="StepAddress">The page where the bytes step down by one (the guest was mid-pass), if any.</param>
/// <param name="BadPages">How many pages broke the rule (QEMU counts them the same way).</param>
/// <param name="FirstBadAddress">The first page that broke the rule, if any.</param>
/// <param name="ExpectedByte">At <paramref name="FirstBadAddress"/>: the byte the rule allowed (the previous good page's).</param>
/// <param name="SeenByte">At <paramref name="FirstBadAddress"/>: the byte found.</param>
/// <param name="Message">One readable sentence saying all of the above.</param>
public sealed record AbRamCheckResult(
    bool Passed,
    ulong PagesChecked,
    byte FirstByte,
    GuestPhysicalAddress? StepAddress,
    ulong BadPages,
    GuestPhysicalAddress? FirstBadAddress,
    byte ExpectedByte,
    byte SeenByte,
    string Message);

/// <summary>
/// Checks guest RAM left by the A/B guest (guests/ab-guest.S) or the fill guest (guests/fill-halt.S),
/// exactly as QEMU's migration test does (<c>check_guests_ram</c> in tests/qtest/migration-test.c):
/// the guest increments the first byte of every page in ascending order, so, read in that order,
/// every page's first byte equals the previous page's, except at most once where it is one less
/// (mod 256: 0x00 followed by 0xff is such a step), where the interrupted pass had reached.
/// <para>
/// What QEMU tolerates, and so this does: an unlimited number of wraps of the counter (only
/// neighbours are compared, never absolute values); all pages equal (stopped between passes); a
/// bad page does not become the new reference, so one corrupt page counts once, not twice. What it
/// rejects: a step up, a step down by more than one, a second step. Unlike QEMU it also reads above
/// 4 GiB and skips holes in guest RAM (the A/B guest skips them too). Call it with the vCPUs stopped;
/// any thread (each read is a native copy, DESIGN.md §5).
/// </para>
/// </summary>
public static class AbRamCheck
{
    /// <summary>Where the guests start writing: 1 MiB.</summary>
    public const ulong DefaultStart = 1UL << 20;

    /// <summary>Checks the pages in [<paramref name="start"/>, <paramref name="end"/>) that are guest RAM.</summary>
    /// <param name="memory">Guest RAM.</param>
    /// <param name="start">First page, page-aligned (the guests start at <see cref="DefaultStart"/>).</param>
    /// <param name="end">End of the range (exclusive); pages <see cref="IGuestMemory.Contains"/> rejects are skipped.</param>
    public static AbRamCheckResult Check(IGuestMemory memory, GuestPhysicalAddress start, GuestPhysicalAddress end)
    {
        ArgumentNullException.ThrowIfNull(memory);
        var checker = new Scan(memory, start, end);
        ulong pageSize = (ulong)memory.PageSize;
        if (start.Value % pageSize != 0 || end <= start)
        {
            throw new ArgumentOutOfRangeException(nameof(start), $"The A/B RAM check needs a page-aligned start below the end; got {start}-{end}.");
        }

        for (ulong address = start.Value; address < end.Value && end.Value - address >= pageSize; address += pageSize)
        {
            var page = new GuestPhysicalAddress(address);
            if (memory.Contains(page, pageSize))
            {
                checker.Visit(page);
            }
        }

        return checker.Result();
    }

    /// <summary>Checks every page of <paramref name="ram"/> from <paramref name="start"/> on: the pages the guests write.</summary>
    /// <param name="memory">Guest RAM.</param>
    /// <param name="ram">The guest's RAM runs, lowest first (for example <see cref="PcRamLayout.For"/>).</param>
    /// <param name="start">First page to check; 1 MiB by default, like the guests.</param>
    public static AbRamCheckResult Check(IGuestMemory memory, IReadOnlyList<GuestRamRange> ram, ulong start = DefaultStart)
    {
        ArgumentNullException.ThrowIfNull(memory);
        ArgumentNullException.ThrowIfNull(ram);
        GuestPhysicalAddress end = ram.Count == 0 ? new(start) : ram.Max(range => range.End);
        var checker = new Scan(memory, new GuestPhysicalAddress(start), end);
        ulong pageSize = (ulong)memory.PageSize;
        foreach (GuestRamRange range in ram.OrderBy(range => range.Start))
        {
            ulong first = Math.Max(range.Start.Value, start);
            first = (first + pageSize - 1) & ~(pageSize - 1);
            for (ulong address = first; address < range.End.Value && range.End.Value - address >= pageSize; address += pageSize)
            {
                checker.Visit(new GuestPhysicalAddress(address));
            }
        }

        return checker.Result();
    }

    /// <summary>The state of one pass over the pages, in ascending address order.</summary>
    private sealed class Scan(IGuestMemory memory, GuestPhysicalAddress start, GuestPhysicalAddress end)
    {
        private readonly byte[] _byte = new byte[1];
        private ulong _pages;
        private byte _first;
        private byte _last;
        private GuestPhysicalAddress? _step;
        private ulong _bad;
        private GuestPhysicalAddress? _firstBad;
        private byte _expected;
        private byte _seen;

        public void Visit(GuestPhysicalAddress page)
        {
            memory.Read(page, _byte);
            byte value = _byte[0];
            if (_pages++ == 0)
            {
                _first = value;
                _last = value;
                return;
            }

            if (value == _last)
            {
                return;
            }

            if ((byte)(value + 1) == _last && _step is null)
            {
                _step = page;
                _last = value;
                return;
            }

            if (_bad++ == 0)
            {
                _firstBad = page;
                _expected = _last;
                _seen = value;
            }
        }

        public AbRamCheckResult Result()
        {
            CultureInfo c = CultureInfo.InvariantCulture;
            string range = string.Create(c, $"{_pages} pages from {start} to {end}");
            string step = _step is { } at
                ? string.Create(c, $"one step down by one at {at} (the guest was mid-pass)")
                : "no step (the guest was between passes, or halted)";
            if (_pages == 0)
            {
                return new AbRamCheckResult(false, 0, 0, null, 0, null, 0, 0,
                    $"A/B RAM check failed: no guest RAM page between {start} and {end}; check the RAM layout given to the check.");
            }

            if (_bad == 0)
            {
                return new AbRamCheckResult(true, _pages, _first, _step, 0, null, 0, 0,
                    string.Create(c, $"A/B RAM check passed: {range}, first byte 0x{_first:x2}, {step}."));
            }

            string message =
                string.Create(c, $"A/B RAM check failed: {range}, first byte 0x{_first:x2}, {step}; at {_firstBad} the first byte is ") +
                string.Create(c, $"0x{_seen:x2} where 0x{_expected:x2} was expected, and {_bad} page(s) in all break the rule that each ") +
                "page's first byte equals the previous page's except one step down by one: guest RAM was lost or corrupted.";
            return new AbRamCheckResult(false, _pages, _first, _step, _bad, _firstBad, _expected, _seen, message);
        }
    }
}
