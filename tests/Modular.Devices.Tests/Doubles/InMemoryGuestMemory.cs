using Modular.Abstractions.Memory;

namespace Modular.Devices.Tests.Doubles;

/// <summary>
/// Guest RAM backed by a byte array, for device tests: records which pages were written (dirty) and
/// how often each page was read, so tests can assert what a device touched.
/// </summary>
public sealed class InMemoryGuestMemory : IGuestMemory
{
    private readonly byte[] _ram;
    private readonly object _lock = new();
    private readonly HashSet<ulong> _dirty = new();
    private readonly Dictionary<ulong, int> _reads = new();

    public InMemoryGuestMemory(int size) => _ram = new byte[size];

    public ulong Size => (ulong)_ram.Length;

    public int PageSize => 4096;

    /// <summary>Page numbers written through <see cref="Write"/> since the last <see cref="ResetTracking"/>.</summary>
    public IReadOnlySet<ulong> DirtyPages { get { lock (_lock) { return new HashSet<ulong>(_dirty); } } }

    /// <summary>How many <see cref="Read"/> calls touched page <paramref name="page"/> since the last reset.</summary>
    public int ReadsOfPage(ulong page) { lock (_lock) { return _reads.GetValueOrDefault(page); } }

    public void ResetTracking() { lock (_lock) { _dirty.Clear(); _reads.Clear(); } }

    public bool Contains(GuestPhysicalAddress address, ulong length) =>
        address.Value <= Size && length <= Size - address.Value;

    public void Read(GuestPhysicalAddress address, Span<byte> destination)
    {
        Check(address, destination.Length);
        lock (_lock)
        {
            foreach (ulong page in Pages(address, destination.Length)) { _reads[page] = _reads.GetValueOrDefault(page) + 1; }
            _ram.AsSpan((int)address.Value, destination.Length).CopyTo(destination);
        }
    }

    public void Write(GuestPhysicalAddress address, ReadOnlySpan<byte> source)
    {
        Check(address, source.Length);
        lock (_lock)
        {
            foreach (ulong page in Pages(address, source.Length)) { _dirty.Add(page); }
            source.CopyTo(_ram.AsSpan((int)address.Value));
        }
    }

    /// <summary>Test setup: writes without marking anything dirty.</summary>
    public void Poke(ulong address, ReadOnlySpan<byte> bytes) { lock (_lock) { bytes.CopyTo(_ram.AsSpan((int)address)); } }

    /// <summary>Test check: reads without counting.</summary>
    public byte[] Peek(ulong address, int length) { lock (_lock) { return _ram.AsSpan((int)address, length).ToArray(); } }

    private void Check(GuestPhysicalAddress address, int length)
    {
        if (!Contains(address, (ulong)length))
        {
            throw new ArgumentOutOfRangeException(nameof(address), $"{address}+0x{length:x} is outside guest RAM (0x{Size:x} bytes).");
        }
    }

    private IEnumerable<ulong> Pages(GuestPhysicalAddress address, int length)
    {
        if (length == 0) { yield break; }
        for (ulong page = address.Value / (ulong)PageSize; page <= (address.Value + (ulong)length - 1) / (ulong)PageSize; page++)
        {
            yield return page;
        }
    }
}
