using Microsoft.Win32.SafeHandles;
using Modular.Abstractions.Memory;
using Modular.Core.Boot;

namespace Modular.Tests.Support;

/// <summary>
/// Read-only guest RAM over a <c>pmemsave</c> dump of guest-physical [0, end): byte N of the file is
/// guest-physical address N. Lets <see cref="Core.Verification.AbRamCheck"/> check another process's RAM.
/// </summary>
internal sealed class DumpGuestMemory : IGuestMemory, IDisposable
{
    private readonly SafeFileHandle _file;
    private readonly IReadOnlyList<GuestRamRange> _ram;
    private readonly long _length;

    public DumpGuestMemory(string path, IReadOnlyList<GuestRamRange> ram)
    {
        _file = File.OpenHandle(path, FileMode.Open, FileAccess.Read);
        _ram = ram;
        _length = RandomAccess.GetLength(_file);
        Size = (ulong)ram.Sum(range => (decimal)range.Size);
        ulong end = ram.Max(range => range.End.Value);
        if ((ulong)_length < end)
        {
            throw new InvalidDataException($"The RAM dump {path} holds {_length} bytes; the layout needs {end}.");
        }
    }

    public ulong Size { get; }

    public int PageSize => 4096;

    public bool Contains(GuestPhysicalAddress address, ulong length) => _ram.Any(range => range.Contains(address, length));

    public void Read(GuestPhysicalAddress address, Span<byte> destination)
    {
        if (!Contains(address, (ulong)destination.Length))
        {
            throw new ArgumentOutOfRangeException(nameof(address), $"{address} (+{destination.Length}) is not guest RAM in the dump.");
        }

        int read = RandomAccess.Read(_file, destination, (long)address.Value);
        if (read != destination.Length)
        {
            throw new EndOfStreamException($"The RAM dump ends before {address}.");
        }
    }

    public void Write(GuestPhysicalAddress address, ReadOnlySpan<byte> source) =>
        throw new NotSupportedException("A RAM dump is read-only.");

    public void Dispose() => _file.Dispose();
}
