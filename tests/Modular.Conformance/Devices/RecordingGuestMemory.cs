using Modular.Abstractions.Devices;
using Modular.Abstractions.Memory;

namespace Modular.Conformance.Devices;

/// <summary>
/// The guest memory a device under test is given: passes every access to the test's RAM and counts
/// them, so the suite can see what the device did through the guest-memory API. It cannot see a
/// device that reaches guest RAM any other way; that is why the API only ever copies.
/// </summary>
public sealed class RecordingGuestMemory(IGuestMemory inner) : IGuestMemory
{
    private long _reads;
    private long _writes;
    private long _outside;

    /// <summary>The RAM behind this view (for the test's own setup; its accesses are not counted).</summary>
    public IGuestMemory Inner { get; } = inner;

    /// <summary>Reads the device made.</summary>
    public long Reads => Interlocked.Read(ref _reads);

    /// <summary>Writes the device made.</summary>
    public long Writes => Interlocked.Read(ref _writes);

    /// <summary>Accesses the device made outside guest RAM (each also threw ArgumentOutOfRangeException).</summary>
    public long Outside => Interlocked.Read(ref _outside);

    /// <inheritdoc/>
    public ulong Size => Inner.Size;

    /// <inheritdoc/>
    public int PageSize => Inner.PageSize;

    /// <inheritdoc/>
    public bool Contains(GuestPhysicalAddress address, ulong length) => Inner.Contains(address, length);

    /// <inheritdoc/>
    public void Read(GuestPhysicalAddress address, Span<byte> destination)
    {
        Interlocked.Increment(ref _reads);
        CountOutside(address, destination.Length);
        Inner.Read(address, destination);
    }

    /// <inheritdoc/>
    public void Write(GuestPhysicalAddress address, ReadOnlySpan<byte> source)
    {
        Interlocked.Increment(ref _writes);
        CountOutside(address, source.Length);
        Inner.Write(address, source);
    }

    private void CountOutside(GuestPhysicalAddress address, int length)
    {
        if (!Inner.Contains(address, (ulong)length))
        {
            Interlocked.Increment(ref _outside);
        }
    }
}

/// <summary>Guest RAM backed by a byte array, the default RAM of the device suite.</summary>
/// <param name="size">RAM size in bytes.</param>
public sealed class ArrayGuestMemory(int size) : IGuestMemory
{
    private readonly byte[] _ram = new byte[size];
    private readonly object _lock = new();

    /// <inheritdoc/>
    public ulong Size => (ulong)_ram.Length;

    /// <inheritdoc/>
    public int PageSize => 4096;

    /// <inheritdoc/>
    public bool Contains(GuestPhysicalAddress address, ulong length) => address.Value <= Size && length <= Size - address.Value;

    /// <inheritdoc/>
    public void Read(GuestPhysicalAddress address, Span<byte> destination)
    {
        Check(address, destination.Length);
        lock (_lock)
        {
            _ram.AsSpan((int)address.Value, destination.Length).CopyTo(destination);
        }
    }

    /// <inheritdoc/>
    public void Write(GuestPhysicalAddress address, ReadOnlySpan<byte> source)
    {
        Check(address, source.Length);
        lock (_lock)
        {
            source.CopyTo(_ram.AsSpan((int)address.Value));
        }
    }

    private void Check(GuestPhysicalAddress address, int length)
    {
        if (!Contains(address, (ulong)length))
        {
            throw new ArgumentOutOfRangeException(nameof(address), $"{address}+0x{length:x} is outside guest RAM (0x{Size:x} bytes).");
        }
    }
}

/// <summary>The machine as the device under test sees it: recorded guest memory, exit requests collected.</summary>
/// <param name="memory">The recorded guest memory.</param>
public sealed class ConformanceDeviceContext(RecordingGuestMemory memory) : IDeviceContext
{
    /// <summary>The recorded guest memory.</summary>
    public RecordingGuestMemory RecordedMemory { get; } = memory;

    /// <inheritdoc/>
    public IGuestMemory Memory => RecordedMemory;

    /// <summary>Exit codes the device asked for.</summary>
    public List<int> ExitRequests { get; } = new();

    /// <inheritdoc/>
    public void RequestExit(int exitCode)
    {
        lock (ExitRequests)
        {
            ExitRequests.Add(exitCode);
        }
    }
}
