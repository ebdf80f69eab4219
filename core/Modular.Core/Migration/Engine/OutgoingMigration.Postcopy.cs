using System.Buffers;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.IO.Pipelines;
using Microsoft.Extensions.Logging;
using Modular.Abstractions.Devices;
using Modular.Core.Memory;
using Modular.Core.Migration.Postcopy;
using Modular.Core.Migration.State;
using Modular.Core.Migration.Stream;
using Modular.Core.Qmp;
using Modular.Core.Vcpus;

namespace Modular.Core.Migration.Engine;

/// <summary>
/// The source's postcopy phase (the seed's "Source behaviour" and "Source side page maps"):
/// switch (stop, sync, discard, package), then background pages with requested pages first.
/// </summary>
/// <remarks>
/// Threads: <see cref="RequestPostcopy"/> runs on the QMP loop; <see cref="OnPageRequest"/> on the
/// return-path reader task, which only enqueues; everything else on the migration task, the only
/// writer of the forward path.
/// </remarks>
public sealed partial class OutgoingMigration
{
    // Background pages are sent in small batches and flushed, so a requested page never waits
    // behind more than one batch of our own data (plus what the transport already buffers).
    private const int BackgroundBatchPages = 16;

    // With a preempt channel, requested pages never wait behind background pages: send in big batches.
    private const int PreemptBackgroundBatchPages = 256;

    // How long the switch waits for the finalizer thread before it stops the guest (5-8 ms of work measured).
    private static readonly TimeSpan FinalizerSettleLimit = TimeSpan.FromMilliseconds(50);

    private readonly ConcurrentQueue<PageRequest> _requests = new();

    // Released for each request queued for the migration task (no preempt channel), which may be
    // waiting on max-postcopy-bandwidth (ThrottleAsync).
    private readonly SemaphoreSlim _requestArrived = new(0);

    // The rate limit in force (ThrottleAsync): max-bandwidth, then max-postcopy-bandwidth.
    private readonly Stopwatch _rateClock = new();
    private ulong _rateLimit;
    private long _rateBase;
    private volatile bool _postcopyRequested;
    private volatile bool _inPostcopy;
    private int _lastRequestedBlock = -1;

    /// <summary>True once the package (LISTEN ... RUN) may have reached the destination: the source guest can no longer be resumed safely.</summary>
    public bool InPostcopy => _inPostcopy;

    /// <summary>
    /// migrate-start-postcopy: switch to postcopy at the migration task's next iteration boundary.
    /// Harmless when the migration has already ended. QMP loop.
    /// </summary>
    public void RequestPostcopy() => _postcopyRequested = true;

    private bool PostcopyEnabled => Settings.Has("postcopy-ram");

    /// <summary>The PING sent right after the postcopy package (QEMU 7.2's postcopy_start sends 4 there too).</summary>
    internal const uint PostcopyPackageSentPing = 4;

    // When the postcopy package was flushed (Stopwatch ticks), for the PONG to the PING after it.
    private long _packageFlushedAt;

    /// <summary>
    /// A page request from the destination (REQ_PAGES_ID names the block, REQ_PAGES reuses the last
    /// one): with a preempt channel, sent at once on it (the migration task only moves its scan
    /// there); otherwise queued for the migration task, which serves it before the next background
    /// batch. Return-path reader task.
    /// </summary>
    /// <remarks>
    /// Not an async method: with the tcp and unix transports the preempt channel's flush completes
    /// at once, and the first run of an async state machine compiles generic code, which with no
    /// tiered compilation happened inside the first request (measured, about 25 methods compiled).
    /// </remarks>
    private ValueTask OnPageRequestAsync(ReturnPathMessage message)
    {
        if (!PostcopyEnabled)
        {
            throw new InvalidOperationException($"the destination requested pages at 0x{message.Start:x}, but this migration does not have postcopy-ram");
        }

        IReadOnlyList<RamBlock> blocks = _machine.Ram.Blocks;
        if (message.Type == ReturnPathMessageType.ReqPagesId)
        {
            _lastRequestedBlock = -1;
            for (int i = 0; i < blocks.Count; i++)
            {
                if (blocks[i].Name == message.BlockId)
                {
                    _lastRequestedBlock = i;
                    break;
                }
            }

            if (_lastRequestedBlock < 0)
            {
                throw new InvalidOperationException($"the destination requested pages of RAM block '{message.BlockId}', which this machine does not have");
            }
        }
        else if (_lastRequestedBlock < 0)
        {
            throw new InvalidOperationException("the destination sent REQ_PAGES before any REQ_PAGES_ID named a RAM block");
        }

        RamBlock block = blocks[_lastRequestedBlock];
        if (message.Start % RamBlock.TargetPageSize != 0 || message.Length == 0 || message.Start + message.Length > block.Size)
        {
            throw new InvalidOperationException($"the destination requested 0x{message.Length:x} bytes at 0x{message.Start:x} of RAM block '{block.Name}' (0x{block.Size:x} bytes): not a page range inside the block");
        }

        Stats.AddPostcopyRequest();
        PreemptSender? preempt = _preempt; // once: a recovery may open the channel meanwhile
        var request = new PageRequest(_lastRequestedBlock, (long)(message.Start / RamBlock.TargetPageSize), (int)((message.Length + RamBlock.TargetPageSize - 1) / RamBlock.TargetPageSize), Sent: preempt is not null);
        _requests.Enqueue(request);
        if (preempt is null)
        {
            _requestArrived.Release();
            return ValueTask.CompletedTask;
        }

        return preempt.SendAsync(request.Block, request.Page, request.Count, _cancel.Token);
    }

    /// <summary>The host page size summary for POSTCOPY_ADVISE: QEMU's ram_pagesize_summary (OR of every block's page size).</summary>
    private ulong HostPageSizeSummary() => _machine.Ram.Blocks.Aggregate(0UL, (sum, b) => sum | b.HostPageSize);

    /// <summary>
    /// The switch and the postcopy phase, up to completion. Migration task; the RAM section is
    /// between two PART sections (closed) when this is called.
    /// </summary>
    private async Task RunPostcopyAsync(MigrationStreamWriter writer, PipeWriter output, RamSaver ram, IReadOnlyList<ISaveVmSection> sections, uint ramSectionId, Func<long, ValueTask> afterFlush, Task returnPathReader)
    {
        // No garbage collection from here until postcopy ends (it would stop the return-path thread,
        // which sends requested pages); entering may collect once, while the guest still runs here.
        using GcQuietRegion gcQuiet = GcQuietRegion.Enter(_logger, "postcopy source");
        // And the finalizer thread that collection woke is done before the stop, not running on the
        // core a kicked vCPU needs (see SettleFinalizersAsync).
        long settleStart = Stopwatch.GetTimestamp();
        bool settled = await GcQuietRegion.SettleFinalizersAsync(FinalizerSettleLimit).ConfigureAwait(false);
        _logger.LogDebug("Postcopy switch: the finalizer thread {Outcome} ({Ms:F1} ms)", settled ? "had finished its work" : "was still busy at the limit; going on", Stopwatch.GetElapsedTime(settleStart).TotalMilliseconds);

        // Raised before the downtime starts: whatever the raise costs (a lost core until the next
        // tick, measured up to 5 ms) is then paid while the guest still runs.
        // Never real-time across an await that may leave this thread to the pool: with
        // pause-before-switchover the switch waits for migrate-continue.
        SwitchPriority priority = SwitchPriority.RaiseCurrentThread(Settings.Has("pause-before-switchover")
            ? Abstractions.Threading.LatencyThreadPolicy.Nice
            : Abstractions.Threading.LatencyThreads.Policy);

        // Switch: stop the guest, take the last dirty bits, tell the destination what to drop.
        long downtimeStart = Stopwatch.GetTimestamp();
        long stopped, discarded, built, flushed;
        int packageBytes;
        var description = new VmDescriptionBuilder();
        try
        {
            _machine.StopAs(QmpRunState.FinishMigrate, priority.Kind == SwitchPriorityKind.RealTime ? ParkWait.LendCpu : ParkWait.Spin);
            await MaybePauseBeforeSwitchoverAsync(next: null).ConfigureAwait(false);
            stopped = Stopwatch.GetTimestamp();
            if (ram.SentMap.Any(m => m.NextSet(0) >= 0))
            {
                // Only pages sent before can need a discard; when nothing was sent yet (postcopy right
                // after the start) every page is still dirty and the sync would change nothing.
                ram.Sync(final: true);
            }
            SendDiscards(writer, ram);
            discarded = Stopwatch.GetTimestamp();

            // The package: LISTEN, every device and vCPU section, RUN, read by the destination in one go.
            var package = new ArrayBufferWriter<byte>(64 * 1024);
            var inner = new MigrationStreamWriter(package);
            new PostcopyListenCommand().WriteTo(inner);
            description.AddRam(ramSectionId);
            WriteDeviceSections(inner, sections, firstSectionId: ramSectionId + 1, description);
            new PostcopyRunCommand().WriteTo(inner);
            if (Interlocked.CompareExchange(ref _commitment, CommitmentPostcopy, CommitmentNone) != CommitmentNone)
            {
                // migrate_cancel came first: nothing of the package went out, the guest resumes here.
                throw new OperationCanceledException("migrate_cancel before the postcopy package");
            }

            _inPostcopy = true;
            built = Stopwatch.GetTimestamp();
            packageBytes = package.WrittenCount;
            PackagedCommand.WriteWithPackage(writer, package.WrittenSpan);
            // Still raised while the flush hands the package over (dropping the priority first let
            // the thread lose its core for up to 4 ms inside the downtime). A flush that has to wait
            // may resume on another thread and leave this one to the pool: not real-time.
            await FlushAsync(output, beforeWaiting: priority.Kind == SwitchPriorityKind.RealTime ? priority.Dispose : null).ConfigureAwait(false);
            flushed = Stopwatch.GetTimestamp();
            Volatile.Write(ref _packageFlushedAt, flushed);
            Stats.SetDowntime((long)Stopwatch.GetElapsedTime(downtimeStart, flushed).TotalMilliseconds);
        }
        finally
        {
            priority.Dispose();
        }

        // QEMU 7.2's postcopy_start sends "ping 4" right after the package ("it could potentially be
        // used for getting a better measurement of downtime at the source"). Here it also warms the
        // request path: the destination's listen thread reads it first and answers while the package
        // thread loads the devices; that PONG is the first message on the return path since the
        // setup, and the return-path reader answers it with an empty batch on the preempt channel
        // (ReadReturnPathAsync). So the request path's code runs in both processes just before the
        // first page request, which otherwise paid for all of it cold.
        new PingCommand(PostcopyPackageSentPing).WriteTo(writer);
        await FlushAsync(output).ConfigureAwait(false);

        double stopMs = Stopwatch.GetElapsedTime(downtimeStart, stopped).TotalMilliseconds;
        double discardMs = Stopwatch.GetElapsedTime(stopped, discarded).TotalMilliseconds;
        double buildMs = Stopwatch.GetElapsedTime(discarded, built).TotalMilliseconds;
        double sendMs = Stopwatch.GetElapsedTime(built, flushed).TotalMilliseconds;
        Stats.SetPostcopySwitch(stopMs, discardMs, buildMs, sendMs);
        await afterFlush(0).ConfigureAwait(false);
        _logger.LogInformation(
            "Postcopy switch: vCPUs stopped in {Stop:F1} ms, sync and discards {Discard:F1} ms, package of {Bytes} bytes built in {Build:F1} ms and sent in {Package:F1} ms",
            stopMs, discardMs, packageBytes, buildMs, sendMs);
        Status.MoveTo(MigrationStatus.PostcopyActive);
        SetRateLimit(Settings.MaxPostcopyBandwidth, writer.Position);

        PassStarted?.Invoke(++_pass);
        var channel = new PostcopyChannel(writer, output, afterFlush, returnPathReader);
        while (true)
        {
            try
            {
                await SendPostcopyRestAsync(channel, ram, ramSectionId, description).ConfigureAwait(false);
                break;
            }
            catch (Exception ex) when (CanRecover(ex))
            {
                channel = await PauseUntilResumedAsync(ex, channel, ram).ConfigureAwait(false);
            }
        }

        Stats.SetFinished();
        _machine.SetRunState(QmpRunState.PostMigrate);
        Status.MoveTo(MigrationStatus.Completed);
    }

    /// <summary>
    /// Postcopy after the switch (or after a recovery): background pages with requested pages first,
    /// until every page has been sent since the switch, then the RAM section's END, EOF and the VM
    /// description, and the destination's SHUT. Migration task.
    /// </summary>
    private async Task SendPostcopyRestAsync(PostcopyChannel channel, RamSaver ram, uint ramSectionId, VmDescriptionBuilder description)
    {
        (MigrationStreamWriter writer, PipeWriter output, Func<long, ValueTask> afterFlush, Task returnPathReader) = channel;

        // Background pages, requested pages first; PART sections of about one iteration budget.
        bool drained = false;
        while (!drained)
        {
            _cancel.Token.ThrowIfCancellationRequested();
            SectionHeader.Part(ramSectionId).WriteTo(writer);
            long started = Environment.TickCount64;
            while (Environment.TickCount64 - started < IterationBudget.TotalMilliseconds)
            {
                if (ServeRequests(writer, ram))
                {
                    await FlushAsync(output).ConfigureAwait(false);
                }

                if (AheadOfRateLimit(writer.Position))
                {
                    // A request ended the wait for max-postcopy-bandwidth (no preempt channel): it has
                    // been served; background pages still wait for their time, as in QEMU, where
                    // only queued pages go out while the rate limit holds. Otherwise a guest that
                    // faults often let the whole background stream through (each request released a
                    // batch; measured 32 MiB in 1.1 s against a 2 MB/s limit once requests took 0.1 ms).
                    await afterFlush(0).ConfigureAwait(false);
                    continue;
                }

                if (!ram.SendDirtyBatch(writer, _preempt is null ? BackgroundBatchPages : PreemptBackgroundBatchPages))
                {
                    drained = true;
                    break;
                }

                await FlushAsync(output).ConfigureAwait(false);
                await afterFlush(0).ConfigureAwait(false);
            }

            writer.WriteRamEos();
            new SectionFooter(ramSectionId).WriteTo(writer);
            await FlushAsync(output).ConfigureAwait(false);
            await afterFlush(0).ConfigureAwait(false);
            Stats.SetRemaining(ram.DirtyPages * RamBlock.TargetPageSize);
        }

        // Every page has been sent at least once since the switch; requests still in flight are for
        // pages on their way, so the RAM section can end.
        SectionHeader.End(ramSectionId).WriteTo(writer);
        writer.WriteRamEos();
        new SectionFooter(ramSectionId).WriteTo(writer);
        writer.WriteEof();

        // As in precopy, the VM description follows EOF; the destination reads it before its SHUT.
        new VmDescription(description.ToJson()).WriteTo(writer);
        await FlushAsync(output).ConfigureAwait(false);
        await afterFlush(0).ConfigureAwait(false);
        Stats.SetRemaining(0);
        await WaitForDestinationAsync(_connection!, returnPath: true, returnPathReader).ConfigureAwait(false);
    }

    /// <summary>
    /// Sends every queued requested page (sent or not before: the destination may have discarded it)
    /// as whole host pages (a request inside a huge page gets the whole huge page), and moves the
    /// scan just after it; pages the preempt channel already carried only move the scan. Returns true
    /// if any page was written. Migration task.
    /// </summary>
    private bool ServeRequests(MigrationStreamWriter writer, RamSaver ram)
    {
        bool any = false;
        while (_requests.TryDequeue(out PageRequest request))
        {
            if (request.Sent)
            {
                // Already on its way through the preempt channel: only the scan moves there.
                ram.MoveCursor(request.Block, request.Page + request.Count - 1);
                continue;
            }

            // Whole host pages: a huge page is sent as all of its target pages, in order.
            long next = request.Page;
            while (next < request.Page + request.Count)
            {
                next = ram.SendHostPage(writer, request.Block, next);
            }

            ram.MoveCursor(request.Block, next - 1);
            any = true;
        }

        return any;
    }

    /// <summary>
    /// POSTCOPY_RAM_DISCARD for every block: pages sent before and dirty again (the seed's
    /// sentmap &amp; migration bitmap), in host-page-aligned byte ranges, split so each command fits.
    /// Migration task, vCPUs stopped.
    /// </summary>
    private void SendDiscards(MigrationStreamWriter writer, RamSaver ram)
    {
        IReadOnlyList<RamBlock> blocks = _machine.Ram.Blocks;
        for (int b = 0; b < blocks.Count; b++)
        {
            RamBlock block = blocks[b];
            List<(ulong Start, ulong Length)> ranges = DiscardRanges(ram.SentMap[b], ram.Dirty[b], block.HostPageSize);
            int max = PostcopyRamDiscardCommand.MaxRanges(System.Text.Encoding.UTF8.GetByteCount(block.Name));
            for (int at = 0; at < ranges.Count; at += max)
            {
                new PostcopyRamDiscardCommand(block.Name, ranges.GetRange(at, Math.Min(max, ranges.Count - at))).WriteTo(writer);
            }
        }
    }

    /// <summary>
    /// The discard set of one block as byte ranges: runs of pages set in both maps, widened to whole
    /// host pages. A widened host page must be resent whole, so its target pages are marked dirty too.
    /// For huge pages a host page counts when any target page is dirty and any (not necessarily the
    /// same) was sent: see <see cref="SentAny"/>.
    /// </summary>
    internal static List<(ulong Start, ulong Length)> DiscardRanges(DirtyBitmap sent, DirtyBitmap dirty, ulong hostPageSize)
    {
        long perHost = (long)Math.Max(1, hostPageSize / RamBlock.TargetPageSize);
        var ranges = new List<(ulong, ulong)>();
        long runStart = -1;
        long runEnd = -1;
        // Target-size host pages: only pages set in both maps matter (walked word by word: the switch
        // is inside the downtime). Huge pages: every dirty page, its host page checked as a whole.
        for (long page = Next(0); page >= 0; page = Next(page + 1))
        {
            long first = page / perHost * perHost;
            long end = Math.Min(first + perHost, dirty.Length);
            if (!SentAny(sent, page, first, end, perHost))
            {
                page = end - 1;
                continue;
            }

            if (perHost > 1)
            {
                dirty.SetRange(first, end - first);
            }

            if (runStart >= 0 && first <= runEnd)
            {
                runEnd = Math.Max(runEnd, end);
            }
            else
            {
                if (runStart >= 0)
                {
                    ranges.Add(((ulong)runStart * RamBlock.TargetPageSize, (ulong)(runEnd - runStart) * RamBlock.TargetPageSize));
                }

                runStart = first;
                runEnd = end;
            }

            page = end - 1;
        }

        if (runStart >= 0)
        {
            ranges.Add(((ulong)runStart * RamBlock.TargetPageSize, (ulong)(runEnd - runStart) * RamBlock.TargetPageSize));
        }

        return ranges;

        long Next(long from) => perHost == 1 ? NextInBoth(sent, dirty, from) : from < dirty.Length ? dirty.NextSet(from) : -1;
    }

    /// <summary>
    /// Whether the destination holds some of the host page [first, end) that dirty page
    /// <paramref name="page"/> lies in. A target-size host page: that page was sent. A huge page: any
    /// of its target pages was sent, because the destination then has the whole huge page present
    /// (partly stale or zero), and after LISTEN a present huge page cannot be filled in (UFFDIO_COPY
    /// refuses it): it must be discarded and resent whole, like QEMU's canonicalised host pages.
    /// </summary>
    private static bool SentAny(DirtyBitmap sent, long page, long first, long end, long perHost)
    {
        if (perHost == 1)
        {
            return sent.Test(page);
        }

        long next = sent.NextSet(first);
        return next >= 0 && next < end;
    }

    /// <summary>The first page at or after <paramref name="from"/> set in both bitmaps (word by word: the switch is inside the downtime), or -1.</summary>
    private static long NextInBoth(DirtyBitmap a, DirtyBitmap b, long from)
    {
        Span<ulong> wa = a.Words;
        Span<ulong> wb = b.Words;
        long word = from >> 6;
        if (from >= a.Length)
        {
            return -1;
        }

        ulong bits = wa[(int)word] & wb[(int)word] & (~0UL << (int)(from & 63));
        while (bits == 0)
        {
            if (++word >= wa.Length)
            {
                return -1;
            }

            bits = wa[(int)word] & wb[(int)word];
        }

        long index = (word << 6) + System.Numerics.BitOperations.TrailingZeroCount(bits);
        return index < a.Length ? index : -1;
    }

    /// <param name="Sent">True when the preempt channel already sent the pages.</param>
    internal readonly record struct PageRequest(int Block, long Page, int Count, bool Sent);

    /// <summary>
    /// How many requests <see cref="WarmUpRequestQueue"/> puts through its scratch queue: more than a
    /// ConcurrentQueue's first segment holds (32 items), so that its growth is compiled as well.
    /// </summary>
    internal const int RequestQueueWarmUpCount = 100;

    /// <summary>
    /// Runs the request queue's enqueue and dequeue on a scratch queue, past its first segment.
    /// ConcurrentQueue over this struct has no precompiled code, so the first page request compiled
    /// Enqueue on the return-path reader (measured: 0.64-0.82 ms of CPU in the first request, 35-150
    /// us in later ones). And the queue grows: with postcopy-preempt every request is queued for the
    /// migration task only to move its scan, and that task drains the queue between background
    /// batches, so while it waits on a full main connection the requests pile up. The 33rd then
    /// needed a new segment, and the return-path reader compiled EnqueueSlow before it could send
    /// the page (session 23: 0.7-1.2 ms at the 33rd to 40th request in about half of the bench's
    /// unix postcopy runs, which set the pooled p99 whenever a run's first request did not).
    /// Warm-up thread.
    /// </summary>
    internal static void WarmUpRequestQueue()
    {
        var scratch = new ConcurrentQueue<PageRequest>();
        for (int i = 0; i < RequestQueueWarmUpCount; i++)
        {
            scratch.Enqueue(new PageRequest(0, i, 1, Sent: false));
        }

        while (scratch.TryDequeue(out _))
        {
        }
    }
}
