using System.Diagnostics;
using System.Text.Json.Nodes;
using Modular.Core.Migration.State;

namespace Modular.Core.Migration.Engine;

/// <summary>
/// Counters of one migration, read by query-migrate (QEMU's field names). Written by the migration
/// task and the return-path reader with atomic operations; read from the QMP loop.
/// </summary>
public sealed class MigrationStats
{
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private long _transferred;
    private long _multifdBytes;
    private long _normalPages;
    private long _duplicatePages;
    private long _remaining;
    private long _total;
    private long _dirtySyncCount;
    private long _postcopyRequests;
    private long _preemptPages;
    private long _xbzrlePages;
    private long _xbzrleBytes;
    private long _xbzrleMisses;
    private long _xbzrleOverflows;
    private long _xbzrleUnchanged;
    private long _xbzrleCacheSize = -1;
    private long _setupMs = -1;
    private long _totalMs = -1;
    private long _downtimeMs = -1;
    private long _expectedDowntimeMs;
    private JsonObject? _postcopySwitch;
    private long _postcopyPongBits = -1;
    private long _mbpsBits;
    private long _dirtyPagesRate;
    private long _pagesPerSecond;

    /// <summary>Bytes written to the transport.</summary>
    public long Transferred => Interlocked.Read(ref _transferred);

    /// <summary>Pages sent with their data.</summary>
    public long NormalPages => Interlocked.Read(ref _normalPages);

    /// <summary>Pages sent as zero pages.</summary>
    public long DuplicatePages => Interlocked.Read(ref _duplicatePages);

    /// <summary>Page requests served (postcopy).</summary>
    public long PostcopyRequests => Interlocked.Read(ref _postcopyRequests);

    /// <summary>Dirty-bitmap syncs.</summary>
    public long DirtySyncCount => Interlocked.Read(ref _dirtySyncCount);

    /// <summary>Milliseconds since the migration started.</summary>
    public long ElapsedMs => _clock.ElapsedMilliseconds;

    /// <summary>The downtime in milliseconds, once known (-1 before).</summary>
    public long DowntimeMs => Interlocked.Read(ref _downtimeMs);

    /// <summary>Total time in milliseconds, once finished (-1 before).</summary>
    public long TotalMs => Interlocked.Read(ref _totalMs);

    internal void AddTransferred(long bytes) => Interlocked.Add(ref _transferred, bytes);

    /// <summary>Bytes the multifd channels carried (QEMU's ram.multifd-bytes): headers and pages.</summary>
    public long MultifdBytes => Interlocked.Read(ref _multifdBytes);

    internal void AddMultifdBytes(long bytes) => Interlocked.Add(ref _multifdBytes, bytes);

    internal void AddNormal() => Interlocked.Increment(ref _normalPages);

    internal void AddNormal(int pages) => Interlocked.Add(ref _normalPages, pages);

    internal void AddDuplicate() => Interlocked.Increment(ref _duplicatePages);

    /// <summary>Turns query-migrate's xbzrle-cache on, with the cache's size (the xbzrle capability).</summary>
    internal void SetXbzrleCacheSize(ulong bytes) => Interlocked.Exchange(ref _xbzrleCacheSize, (long)bytes);

    /// <summary>A page sent as an XBZRLE record of <paramref name="encodedBytes"/>.</summary>
    internal void AddXbzrlePage(int encodedBytes)
    {
        Interlocked.Increment(ref _xbzrlePages);
        Interlocked.Add(ref _xbzrleBytes, encodedBytes);
    }

    /// <summary>A dirty page not in the XBZRLE cache (sent whole).</summary>
    internal void AddXbzrleMiss() => Interlocked.Increment(ref _xbzrleMisses);

    /// <summary>A cached page whose difference was no smaller than the page (sent whole).</summary>
    internal void AddXbzrleOverflow() => Interlocked.Increment(ref _xbzrleOverflows);

    /// <summary>A dirty page whose bytes equal the cached copy (nothing sent).</summary>
    internal void AddXbzrleUnchanged() => Interlocked.Increment(ref _xbzrleUnchanged);

    internal void AddPostcopyRequest() => Interlocked.Increment(ref _postcopyRequests);

    /// <summary>Pages sent on the postcopy preempt channel (query-migrate's ram.x-modular-preempt-pages).</summary>
    public long PreemptPages => Interlocked.Read(ref _preemptPages);

    internal void AddPreemptPages(int pages) => Interlocked.Add(ref _preemptPages, pages);

    internal void AddDirtySync() => Interlocked.Increment(ref _dirtySyncCount);

    internal void SetTotalBytes(long bytes) => Interlocked.Exchange(ref _total, bytes);

    internal void SetRemaining(long bytes) => Interlocked.Exchange(ref _remaining, bytes);

    internal void SetSetupDone() => Interlocked.Exchange(ref _setupMs, _clock.ElapsedMilliseconds);

    internal void SetDowntime(long ms) => Interlocked.Exchange(ref _downtimeMs, ms);

    /// <summary>
    /// The postcopy switch's parts, in ms (query-migrate's x-modular-postcopy-switch, source): the
    /// vCPUs' stop, the last dirty sync with the discards, building the package, sending it. Their sum
    /// is the downtime; the stop is the part that varies most on a busy host. Migration task, once.
    /// </summary>
    internal void SetPostcopySwitch(double stopVcpusMs, double discardsMs, double packageMs, double sendMs) =>
        Volatile.Write(ref _postcopySwitch, new JsonObject
        {
            ["stop-vcpus-ms"] = Math.Round(stopVcpusMs, 1),
            ["sync-discards-ms"] = Math.Round(discardsMs, 1),
            ["package-ms"] = Math.Round(packageMs, 1),
            ["send-ms"] = Math.Round(sendMs, 1),
        });

    /// <summary>
    /// When the destination answered the PING that follows the postcopy package, in ms after the
    /// package was flushed (x-modular-postcopy-switch's pong-after-package-ms): its listen thread
    /// read the stream by then. QEMU 7.2 sends the same PING 4 and notes it "could potentially be
    /// used for getting a better measurement of downtime at the source". Return-path reader, once.
    /// </summary>
    internal void SetPostcopyPong(double ms) => Interlocked.Exchange(ref _postcopyPongBits, BitConverter.DoubleToInt64Bits(Math.Round(ms, 1)));

    internal void SetFinished() => Interlocked.Exchange(ref _totalMs, _clock.ElapsedMilliseconds);

    internal void SetRates(double bytesPerSecond, double dirtyPagesPerSecond, double pagesPerSecond, long expectedDowntimeMs)
    {
        Interlocked.Exchange(ref _mbpsBits, BitConverter.DoubleToInt64Bits(bytesPerSecond * 8 / 1e6));
        Interlocked.Exchange(ref _dirtyPagesRate, (long)dirtyPagesPerSecond);
        Interlocked.Exchange(ref _pagesPerSecond, (long)pagesPerSecond);
        Interlocked.Exchange(ref _expectedDowntimeMs, expectedDowntimeMs);
    }

    /// <summary>The query-migrate reply for a migration in <paramref name="status"/>.</summary>
    /// <param name="status">The current status.</param>
    /// <param name="error">The error description when failed.</param>
    /// <param name="outgoing">True on the source (RAM figures are the source's).</param>
    public JsonObject ToQmp(MigrationStatus status, string? error, bool outgoing)
    {
        var reply = new JsonObject { ["status"] = status.ToQmp() };
        if (status == MigrationStatus.None)
        {
            return reply;
        }

        long total = Interlocked.Read(ref _totalMs);
        reply["total-time"] = total >= 0 ? total : _clock.ElapsedMilliseconds;
        long setup = Interlocked.Read(ref _setupMs);
        if (setup >= 0)
        {
            reply["setup-time"] = setup;
        }

        long downtime = Interlocked.Read(ref _downtimeMs);
        if (downtime >= 0)
        {
            reply["downtime"] = downtime;
        }
        else if (status is MigrationStatus.Active or MigrationStatus.Setup)
        {
            reply["expected-downtime"] = Interlocked.Read(ref _expectedDowntimeMs);
        }

        if (Volatile.Read(ref _postcopySwitch) is { } postcopySwitch)
        {
            JsonNode parts = postcopySwitch.DeepClone();
            long pong = Interlocked.Read(ref _postcopyPongBits);
            if (pong != -1)
            {
                parts["pong-after-package-ms"] = BitConverter.Int64BitsToDouble(pong);
            }

            reply["x-modular-postcopy-switch"] = parts;
        }

        if (outgoing || Transferred > 0 || MultifdBytes > 0)
        {
            long normal = NormalPages;
            reply["ram"] = new JsonObject
            {
                ["transferred"] = Transferred,
                ["remaining"] = Interlocked.Read(ref _remaining),
                ["total"] = Interlocked.Read(ref _total),
                ["duplicate"] = DuplicatePages,
                ["normal"] = normal,
                ["normal-bytes"] = normal * 4096,
                ["dirty-pages-rate"] = Interlocked.Read(ref _dirtyPagesRate),
                ["mbps"] = BitConverter.Int64BitsToDouble(Interlocked.Read(ref _mbpsBits)),
                ["dirty-sync-count"] = DirtySyncCount,
                ["pages-per-second"] = Interlocked.Read(ref _pagesPerSecond),
                ["postcopy-requests"] = PostcopyRequests,
                ["multifd-bytes"] = MultifdBytes,
                ["x-modular-preempt-pages"] = PreemptPages,
                ["page-size"] = 4096,
            };
        }

        long cacheSize = Interlocked.Read(ref _xbzrleCacheSize);
        if (cacheSize >= 0)
        {
            long pages = Interlocked.Read(ref _xbzrlePages), bytes = Interlocked.Read(ref _xbzrleBytes), misses = Interlocked.Read(ref _xbzrleMisses);
            long lookups = pages + misses + Interlocked.Read(ref _xbzrleOverflows) + Interlocked.Read(ref _xbzrleUnchanged);
            reply["xbzrle-cache"] = new JsonObject
            {
                ["cache-size"] = cacheSize,
                ["bytes"] = bytes,
                ["pages"] = pages,
                ["cache-miss"] = misses,
                ["cache-miss-rate"] = lookups == 0 ? 0.0 : misses / (double)lookups,
                ["encoding-rate"] = bytes == 0 ? 0.0 : pages * 4096.0 / bytes,
                ["overflow"] = Interlocked.Read(ref _xbzrleOverflows),
                ["x-modular-unchanged"] = Interlocked.Read(ref _xbzrleUnchanged),
            };
        }

        if (error is not null)
        {
            reply["error-desc"] = error;
        }

        return reply;
    }
}
