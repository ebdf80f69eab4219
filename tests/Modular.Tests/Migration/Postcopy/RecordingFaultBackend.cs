using Modular.Abstractions.Faults;

namespace Modular.Tests.Migration.Postcopy;

/// <summary>
/// A fault backend double that records what the engine asks of it (placements with their contents,
/// zero pages, wakes) instead of touching RAM; a second placement at one address reports
/// <see cref="PlaceResult.AlreadyPresent"/>, as UFFDIO_COPY's EEXIST does. Faults never arrive.
/// </summary>
internal sealed class RecordingFaultBackend : IFaultBackend
{
    private readonly HashSet<nint> _present = [];

    public List<(nint Address, byte[] Contents)> Placed { get; } = [];

    public List<(nint Address, ulong Length)> ZeroPlaced { get; } = [];

    public List<(nint Address, ulong Length)> Woken { get; } = [];

    public List<PlaceResult> Results { get; } = [];

    /// <summary>Each PlacePages call: where and how many pages (its pages are also in <see cref="Placed"/>).</summary>
    public List<(nint Address, int Pages)> Runs { get; } = [];

    public void Arm(HostRamRange range)
    {
    }

    public void Disarm(HostRamRange range)
    {
    }

    /// <summary>Called on each ReadFaults, on the reading thread (the fault thread).</summary>
    public Action? OnReadFaults { get; init; }

    public int ReadFaults(Span<PageFault> faults)
    {
        OnReadFaults?.Invoke();
        return 0;
    }

    public PlaceResult PlacePage(nint hostAddress, ReadOnlySpan<byte> contents)
    {
        Placed.Add((hostAddress, contents.ToArray()));
        return Record(hostAddress);
    }

    public int PlacePages(nint hostAddress, ReadOnlySpan<byte> contents, ulong pageSize)
    {
        Runs.Add((hostAddress, contents.Length / (int)pageSize));
        int placed = 0;
        for (int at = 0; at < contents.Length; at += (int)pageSize)
        {
            placed += PlacePage(hostAddress + at, contents.Slice(at, (int)pageSize)) == PlaceResult.Placed ? 1 : 0;
        }

        return placed;
    }

    public PlaceResult PlaceZeroPage(nint hostAddress, ulong pageSize)
    {
        ZeroPlaced.Add((hostAddress, pageSize));
        return Record(hostAddress);
    }

    public void Wake(nint hostAddress, ulong length) => Woken.Add((hostAddress, length));

    public void Shutdown()
    {
    }

    public void Dispose()
    {
    }

    private PlaceResult Record(nint hostAddress)
    {
        PlaceResult result = _present.Add(hostAddress) ? PlaceResult.Placed : PlaceResult.AlreadyPresent;
        Results.Add(result);
        return result;
    }
}
