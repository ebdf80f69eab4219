using System.Collections.Concurrent;
using Modular.Abstractions.Transports;
using Modular.Core.Memory;
using Modular.Core.Migration.Stream;

namespace Modular.Core.Migration.Multifd;

/// <summary>
/// The source's multifd channels (QEMU's multifd capability, precopy): the migration task queues
/// normal pages (<see cref="Queue"/>); every <see cref="MultifdPackets.PagesPerPacket"/> pages of one
/// block become a packet, and every <see cref="PacketsPerJob"/> packets a job that an idle channel's
/// thread sends with one gather send, headers and pages straight from guest RAM (no copy in user
/// space). <see cref="Sync"/> ends a RAM section part: every
/// channel sends a SYNC packet (the destination's channels then wait for the main stream's EOS).
/// </summary>
/// <remarks>
/// <para>Pages go out as they are when their packet is sent; one the guest changes after the dirty
/// log was read is dirty again and sent again, as with QEMU's multifd.</para>
/// <para>Threads: <see cref="Queue"/>, <see cref="Sync"/> and <see cref="Complete"/> from the migration
/// task, one call at a time (they block while every channel is busy: the transport's backpressure);
/// one thread per channel sends; <see cref="Dispose"/> from the migration task's cleanup.</para>
/// </remarks>
internal sealed class MultifdSender : IDisposable
{
    /// <summary>
    /// Packets handed to a channel at once (4 MiB of pages): QEMU hands over one packet (512 KiB) at a
    /// time; each hand-over is a wake-up of a channel thread and, when all are busy, a wait of the
    /// migration task, which on this 2-core host spun (sched_yield) for a third of its samples.
    /// The packets on the wire are QEMU's either way.
    /// </summary>
    internal const int PacketsPerJob = 8;

    private readonly Channel[] _channels;
    private readonly ConcurrentQueue<Channel> _idle = new();
    private readonly SemaphoreSlim _idleCount;
    private readonly CancellationTokenSource _failed = new();
    private readonly CancellationToken _cancellation;
    private readonly Action<Exception> _onError;
    private readonly Batch _batch = new();
    private ulong _packetNumber;
    private long _bytes;
    private Exception? _error;

    private MultifdSender(IRawChannel[] channels, Action<Exception> onError, CancellationToken cancellationToken)
    {
        _onError = onError;
        _cancellation = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _failed.Token).Token;
        _idleCount = new SemaphoreSlim(channels.Length);
        _channels = new Channel[channels.Length];
        for (int i = 0; i < channels.Length; i++)
        {
            _channels[i] = new Channel(this, channels[i], (byte)i);
            _idle.Enqueue(_channels[i]);
        }
    }

    /// <summary>Bytes sent on the channels so far (headers and pages).</summary>
    internal long BytesSent => Interlocked.Read(ref _bytes);

    /// <summary>Opens channels 1 to <paramref name="count"/> in order and sends each one's initial message.</summary>
    /// <param name="connection">The migration's connection: it must offer <see cref="IRawChannels"/>.</param>
    /// <param name="count">The multifd-channels parameter.</param>
    /// <param name="onError">Called once, from a channel thread, when a channel fails (the migration aborts its connection).</param>
    /// <param name="cancellationToken">The migration's cancellation.</param>
    internal static async Task<MultifdSender> OpenAsync(IMigrationConnection connection, int count, Action<Exception> onError, CancellationToken cancellationToken)
    {
        IRawChannel[] channels = await MultifdChannels.OpenAsync(connection, count, "destination", cancellationToken).ConfigureAwait(false);
        try
        {
            byte[] init = new byte[MultifdPackets.InitLength];
            for (int i = 0; i < channels.Length; i++)
            {
                MultifdPackets.WriteInit(init, (byte)i);
                unsafe
                {
                    fixed (byte* bytes = init)
                    {
                        channels[i].Send([new RawSegment((nint)bytes, init.Length)]);
                    }
                }
            }
        }
        catch
        {
            MultifdChannels.Close(channels);
            throw;
        }

        var sender = new MultifdSender(channels, onError, cancellationToken);
        sender._bytes = (long)count * MultifdPackets.InitLength;
        return sender;
    }

    /// <summary>Queues a normal page; a full packet goes to the next idle channel (waiting for one if all are busy).</summary>
    /// <param name="block">The page's block.</param>
    /// <param name="offset">The page's offset in the block.</param>
    /// <param name="address">The page's host address; the block stays mapped while this sender lives.</param>
    internal void Queue(RamBlock block, ulong offset, nint address)
    {
        if (_batch.Block is not null && (_batch.Block != block || _batch.Count == MultifdPackets.PagesPerPacket))
        {
            _batch.ClosePacket(flags: 0, ++_packetNumber);
            if (_batch.Packets == PacketsPerJob)
            {
                Submit();
            }
        }

        _batch.Add(block, offset, address);
    }

    /// <summary>
    /// Ends a RAM section part (call it before the part's EOS): the queued pages and a SYNC on every
    /// channel go out; returns when every channel has sent its SYNC.
    /// </summary>
    internal void Sync()
    {
        // Every channel idle first, so that each gets exactly one SYNC.
        for (int i = 0; i < _channels.Length; i++)
        {
            WaitIdle();
        }

        _idle.Clear();
        foreach (Channel channel in _channels)
        {
            // The first channel also takes what is queued; its SYNC is the job's last packet.
            _batch.ClosePacket(MultifdPackets.FlagSync, ++_packetNumber, evenIfEmpty: true);
            channel.Start(_batch.TakeJob());
        }

        // Each channel queued itself as idle again when its SYNC was out.
        for (int i = 0; i < _channels.Length; i++)
        {
            WaitIdle();
        }

        _idleCount.Release(_channels.Length);
    }

    /// <summary>After the last <see cref="Sync"/>: ends every channel's sending (the destination's channels see a clean end).</summary>
    internal void Complete()
    {
        ThrowIfFailed();
        foreach (Channel channel in _channels)
        {
            channel.Raw.CompleteSend();
        }
    }

    /// <summary>Aborts channels still sending (a failed or cancelled migration) and waits for their threads; then the pages they referenced may go.</summary>
    public void Dispose()
    {
        MultifdChannels.Stop(_channels);

        _failed.Dispose();
        _idleCount.Dispose();
    }

    private void Submit()
    {
        WaitIdle();
        if (!_idle.TryDequeue(out Channel? channel))
        {
            throw new InvalidOperationException("multifd: no idle channel after the wait");
        }

        channel.Start(_batch.TakeJob());
    }

    private void WaitIdle()
    {
        try
        {
            _idleCount.Wait(_cancellation);
        }
        catch (OperationCanceledException) when (_error is not null)
        {
            ThrowIfFailed();
        }

        ThrowIfFailed();
    }

    private void ThrowIfFailed()
    {
        if (_error is { } error)
        {
            throw new IOException($"multifd: {error.Message}", error);
        }
    }

    private void Sent(Channel channel, long bytes)
    {
        Interlocked.Add(ref _bytes, bytes);
        _idle.Enqueue(channel);
        _idleCount.Release();
    }

    private void Failed(Exception error)
    {
        if (Interlocked.CompareExchange(ref _error, error, null) is null)
        {
            _failed.Cancel();
            _onError(error);
        }
    }

    /// <summary>
    /// The job being filled: closed packets, and an open one for more pages. Pages are written once,
    /// into a packet that the channel sends from; sent packets and jobs come back for reuse (no
    /// allocation per packet on this per-page path).
    /// </summary>
    private sealed class Batch
    {
        private readonly ConcurrentQueue<Packet> _freePackets = new();
        private readonly ConcurrentQueue<List<Packet>> _freeJobs = new();
        private List<Packet> _job = new(PacketsPerJob + 1);
        private Packet? _open;

        /// <summary>The open packet's block (null: no page in it).</summary>
        internal RamBlock? Block => _open?.Block;

        /// <summary>Pages in the open packet.</summary>
        internal int Count => _open?.Count ?? 0;

        /// <summary>Closed packets in the job.</summary>
        internal int Packets => _job.Count;

        internal void Add(RamBlock block, ulong offset, nint address)
        {
            _open ??= Rent();
            _open.Block = block;
            _open.Offsets[_open.Count] = offset;
            _open.Addresses[_open.Count] = address;
            _open.Count++;
        }

        /// <summary>Closes the open packet into the job (an empty one only with <paramref name="evenIfEmpty"/>: a SYNC alone).</summary>
        internal void ClosePacket(uint flags, ulong number, bool evenIfEmpty = false)
        {
            if (Count == 0 && !evenIfEmpty)
            {
                return;
            }

            Packet packet = _open ?? Rent();
            packet.Flags = flags;
            packet.Number = number;
            _job.Add(packet);
            _open = null;
        }

        /// <summary>Takes the job's packets (the open packet must have been closed); give them back with <see cref="Return"/>.</summary>
        internal List<Packet> TakeJob()
        {
            List<Packet> job = _job;
            _job = _freeJobs.TryDequeue(out List<Packet>? free) ? free : new List<Packet>(PacketsPerJob + 1);
            return job;
        }

        /// <summary>A sent job's packets and list, for reuse. Any thread.</summary>
        internal void Return(List<Packet> job)
        {
            foreach (Packet packet in job)
            {
                packet.Block = null;
                packet.Count = 0;
                _freePackets.Enqueue(packet);
            }

            job.Clear();
            _freeJobs.Enqueue(job);
        }

        private Packet Rent() => _freePackets.TryDequeue(out Packet? packet) ? packet : new Packet();
    }

    /// <summary>A packet's fields and its pages (the first <see cref="Count"/> of the arrays).</summary>
    private sealed class Packet
    {
        internal readonly ulong[] Offsets = new ulong[MultifdPackets.PagesPerPacket];
        internal readonly nint[] Addresses = new nint[MultifdPackets.PagesPerPacket];

        internal uint Flags { get; set; }

        internal ulong Number { get; set; }

        internal RamBlock? Block { get; set; }

        internal int Count { get; set; }
    }

    /// <summary>One channel and its sending thread, which sends one packet at a time.</summary>
    private sealed class Channel : MultifdChannels.IChannelThread
    {
        private readonly MultifdSender _owner;
        private readonly Thread _thread;
        private readonly Task _starting;
        private readonly SemaphoreSlim _work = new(0);
        // One header per packet of a job; a job ends with at most one more packet (Sync's).
        private readonly byte[] _headers = GC.AllocateUninitializedArray<byte>(MultifdPackets.HeaderLength * (PacketsPerJob + 1), pinned: true);
        private readonly RawSegment[] _segments = new RawSegment[(MultifdPackets.PagesPerPacket + 1) * (PacketsPerJob + 1)];
        private List<Packet>? _job;
        private volatile bool _stop;

        internal Channel(MultifdSender owner, IRawChannel raw, byte id)
        {
            _owner = owner;
            Raw = raw;
            _thread = new Thread(Loop) { IsBackground = true, Name = $"multifd send {id}" };
            _starting = MultifdChannels.StartSoon(_thread);
        }

        public IRawChannel Raw { get; }

        internal void Start(List<Packet> job)
        {
            _job = job;
            _work.Release();
        }

        public void Stop()
        {
            _stop = true;
            Raw.Abort();
            _work.Release();
        }

        public void Join()
        {
            _starting.Wait();
            _thread.Join();
        }

        private unsafe void Loop()
        {
            while (true)
            {
                _work.Wait();
                if (_stop)
                {
                    return;
                }

                List<Packet> job = _job!;
                long bytes = 0;
                try
                {
                    fixed (byte* headers = _headers)
                    {
                        int count = 0;
                        for (int p = 0; p < job.Count; p++)
                        {
                            Packet packet = job[p];
                            Span<byte> header = _headers.AsSpan(p * MultifdPackets.HeaderLength, MultifdPackets.HeaderLength);
                            MultifdPackets.WriteHeader(header, packet.Flags, packet.Number, packet.Block?.Name ?? string.Empty, packet.Offsets.AsSpan(0, packet.Count));
                            _segments[count++] = new RawSegment((nint)(headers + (p * MultifdPackets.HeaderLength)), MultifdPackets.HeaderLength);
                            for (int i = 0; i < packet.Count; i++)
                            {
                                nint address = packet.Addresses[i];
                                RawSegment last = _segments[count - 1];
                                if (i > 0 && last.Address + last.Length == address)
                                {
                                    _segments[count - 1] = last with { Length = last.Length + RamBlock.TargetPageSize };
                                }
                                else
                                {
                                    _segments[count++] = new RawSegment(address, RamBlock.TargetPageSize);
                                }
                            }

                            bytes += MultifdPackets.HeaderLength + ((long)packet.Count * RamBlock.TargetPageSize);
                        }

                        Raw.Send(_segments.AsSpan(0, count));
                    }
                }
                catch (Exception ex) when (ex is IOException or ObjectDisposedException or InvalidOperationException)
                {
                    _owner.Failed(_stop ? new IOException($"{Raw.Description} was closed") : ex);
                    return;
                }

                _owner._batch.Return(job);
                _owner.Sent(this, bytes);
            }
        }
    }
}
