using Microsoft.Win32.SafeHandles;
using Modular.Abstractions.Memory;

namespace Modular.Core.Verification;

/// <summary>
/// A read-only view of guest RAM saved by QMP <c>pmemsave</c> (guest-physical address 0 at file
/// offset 0), so the A/B RAM check can run against another process's guest.
/// </summary>
public sealed class DumpFileMemory : IGuestMemory, IDisposable
{
    private readonly SafeFileHandle _file;

    /// <summary>Opens a pmemsave dump.</summary>
    /// <param name="path">The dump file.</param>
    public DumpFileMemory(string path)
    {
        _file = File.OpenHandle(path, FileMode.Open, FileAccess.Read);
        Size = (ulong)RandomAccess.GetLength(_file);
    }

    /// <inheritdoc />
    public ulong Size { get; }

    /// <inheritdoc />
    public int PageSize => 4096;

    /// <inheritdoc />
    public bool Contains(GuestPhysicalAddress address, ulong length) => address.Value <= Size && length <= Size - address.Value;

    /// <inheritdoc />
    public void Read(GuestPhysicalAddress address, Span<byte> destination)
    {
        if (!Contains(address, (ulong)destination.Length))
        {
            throw new ArgumentOutOfRangeException(nameof(address), $"{address}+{destination.Length} lies outside the {Size}-byte dump.");
        }

        int read = RandomAccess.Read(_file, destination, (long)address.Value);
        if (read != destination.Length)
        {
            throw new IOException($"Short read at {address} of the RAM dump.");
        }
    }

    /// <inheritdoc />
    public void Write(GuestPhysicalAddress address, ReadOnlySpan<byte> source) =>
        throw new NotSupportedException("A RAM dump is read-only.");

    /// <inheritdoc />
    public void Dispose() => _file.Dispose();
}
