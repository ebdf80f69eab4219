using Modular.Abstractions.Transports;
using Modular.Core.Memory;
using Modular.Core.Migration.Engine;
using Modular.Core.Migration.Stream;

namespace Modular.Core.Migration.Multifd;

/// <summary>
/// The destination's multifd channels: one thread per channel reads each packet's header, checks it,
/// and receives its pages straight into guest RAM with one scatter receive (no copy in user space).
/// At a SYNC packet the channel waits until the main stream's loader reaches the RAM section part's
/// EOS (<see cref="SyncAsync"/>), so a page sent again in a later part never lands before the older copy.
/// </summary>
/// <remarks>
/// Threads: a thread per channel; <see cref="SyncAsync"/> and <see cref="CompleteAsync"/> from the
/// main incoming task; <see cref="Dispose"/> from its cleanup. A channel that fails calls the
/// error callback (the migration aborts its connection) and wakes a waiting <see cref="SyncAsync"/>.
/// </remarks>
internal sealed class MultifdReceiver : IDisposable
{
    private readonly Channel[] _channels;
    private readonly SemaphoreSlim _synced = new(0);
    private readonly Action<Exception> _onError;
    private readonly MigrationStats _stats;
    private readonly Dictionary<string, RamBlock> _blocks;
    private readonly RamBlock.MappingLease[] _leases;
    private Exception? _error;

    private MultifdReceiver(IRawChannel[] channels, GuestRam ram, MigrationStats stats, Action<Exception> onError)
    {
        _onError = onError;
        _stats = stats;
        _blocks = ram.Blocks.ToDictionary(b => b.Name, StringComparer.Ordinal);
        _leases = ram.Blocks.Select(b => b.KeepMapped()).ToArray();
        _channels = new Channel[channels.Length];
        for (int i = 0; i < channels.Length; i++)
        {
            _channels[i] = new Channel(this, channels[i], i);
        }
    }

    /// <summary>Accepts channels 1 to <paramref name="count"/> in order and starts their threads.</summary>
    /// <param name="connection">The accepted main connection: it must offer <see cref="IRawChannels"/>.</param>
    /// <param name="count">The multifd-channels parameter (the source must use the same).</param>
    /// <param name="ram">Guest RAM, which the pages go straight into.</param>
    /// <param name="stats">Counts the pages as normal pages.</param>
    /// <param name="onError">Called once, from a channel thread, when a channel fails.</param>
    /// <param name="cancellationToken">The incoming migration's cancellation.</param>
    internal static async Task<MultifdReceiver> AcceptAsync(IMigrationConnection connection, int count, GuestRam ram, MigrationStats stats, Action<Exception> onError, CancellationToken cancellationToken)
    {
        IRawChannel[] channels = await MultifdChannels.OpenAsync(connection, count, "source", cancellationToken).ConfigureAwait(false);
        var receiver = new MultifdReceiver(channels, ram, stats, onError);
        foreach (Channel channel in receiver._channels)
        {
            channel.Start();
        }

        return receiver;
    }

    /// <summary>At a RAM section part's EOS: waits until every channel has reached its SYNC packet, then lets them go on.</summary>
    internal async ValueTask SyncAsync(CancellationToken cancellationToken)
    {
        for (int i = 0; i < _channels.Length; i++)
        {
            await _synced.WaitAsync(cancellationToken).ConfigureAwait(false);
            ThrowIfFailed();
        }

        foreach (Channel channel in _channels)
        {
            channel.Release();
        }
    }

    /// <summary>After the stream's EOF: waits (a few seconds at most) until every channel has ended cleanly.</summary>
    internal async ValueTask CompleteAsync(CancellationToken cancellationToken)
    {
        foreach (Channel channel in _channels)
        {
            if (!await channel.Finished.WaitAsync(MultifdChannels.OpenTimeout, cancellationToken).ContinueWith(t => t.IsCompletedSuccessfully, TaskScheduler.Default).ConfigureAwait(false))
            {
                throw new IOException($"multifd: {channel.Raw.Description} did not end within {MultifdChannels.OpenTimeout.TotalSeconds:F0} s of the stream's EOF");
            }
        }

        ThrowIfFailed();
    }

    /// <summary>Aborts channels still receiving, waits for their threads, and lets RAM go.</summary>
    public void Dispose()
    {
        MultifdChannels.Stop(_channels);

        foreach (RamBlock.MappingLease lease in _leases)
        {
            lease.Dispose();
        }

        _synced.Dispose();
    }

    private void ThrowIfFailed()
    {
        if (_error is { } error)
        {
            throw error is MigrationStreamException ? error : new IOException($"multifd: {error.Message}", error);
        }
    }

    private void Failed(Exception error)
    {
        if (Interlocked.CompareExchange(ref _error, error, null) is null)
        {
            _synced.Release(_channels.Length); // wake a SyncAsync, which then throws
            _onError(error);
        }
    }

    /// <summary>One channel and its receiving thread.</summary>
    private sealed class Channel : MultifdChannels.IChannelThread
    {
        private readonly MultifdReceiver _owner;
        private readonly int _id;
        private readonly Thread _thread;
        private readonly SemaphoreSlim _go = new(0);
        private Task? _starting;
        private readonly TaskCompletionSource _finished = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly byte[] _header = GC.AllocateUninitializedArray<byte>(MultifdPackets.HeaderLength, pinned: true);
        private readonly ulong[] _offsets = new ulong[MultifdPackets.PagesPerPacket];
        private readonly RawSegment[] _segments = new RawSegment[MultifdPackets.PagesPerPacket];
        private volatile bool _stop;

        internal Channel(MultifdReceiver owner, IRawChannel raw, int id)
        {
            _owner = owner;
            _id = id;
            Raw = raw;
            _thread = new Thread(Loop) { IsBackground = true, Name = $"multifd recv {id}" };
        }

        public IRawChannel Raw { get; }

        internal Task Finished => _finished.Task;

        internal void Start() => _starting = MultifdChannels.StartSoon(_thread);

        internal void Release() => _go.Release();

        public void Stop()
        {
            _stop = true;
            Raw.Abort();
            _go.Release();
        }

        public void Join()
        {
            if (_starting is { } starting)
            {
                starting.Wait();
                _thread.Join();
            }
        }

        private unsafe void Loop()
        {
            long at = 0;
            try
            {
                fixed (byte* header = _header)
                {
                    if (!Raw.Receive([new RawSegment((nint)header, MultifdPackets.InitLength)]))
                    {
                        throw new EndOfStreamException($"{Raw.Description} ended before its multifd initial message");
                    }

                    byte id = MultifdPackets.ReadInit(_header.AsSpan(0, MultifdPackets.InitLength), Raw.Description);
                    if (id != _id)
                    {
                        throw new MigrationStreamException(24, "multifd initial message", $"{Raw.Description}: channel id {id}, expected {_id} (channels are opened in order)");
                    }

                    at = MultifdPackets.InitLength;
                    while (Raw.Receive([new RawSegment((nint)header, _header.Length)]))
                    {
                        MultifdPackets.Header packet = MultifdPackets.ReadHeader(_header, _offsets, at, Raw.Description);
                        at += _header.Length;
                        _owner._stats.AddMultifdBytes(_header.Length);
                        if (packet.NormalPages > 0)
                        {
                            if (!Raw.Receive(Segments(packet, at)))
                            {
                                throw new EndOfStreamException($"{Raw.Description} ended after the header of packet {packet.PacketNumber}, before its {packet.NormalPages} pages");
                            }

                            at += (long)packet.NormalPages * RamBlock.TargetPageSize;
                            _owner._stats.AddNormal(packet.NormalPages);
                            _owner._stats.AddMultifdBytes((long)packet.NormalPages * RamBlock.TargetPageSize);
                        }

                        if (packet.IsSync)
                        {
                            _owner._synced.Release();
                            _go.Wait();
                            if (_stop)
                            {
                                return;
                            }
                        }
                    }
                }

                _finished.TrySetResult();
            }
            catch (Exception ex) when (ex is IOException or MigrationStreamException or ObjectDisposedException)
            {
                if (!_stop)
                {
                    _owner.Failed(ex);
                }

                _finished.TrySetException(ex);
            }
        }

        // Where the packet's pages go: guest RAM, adjacent pages in one segment.
        private ReadOnlySpan<RawSegment> Segments(MultifdPackets.Header packet, long at)
        {
            if (!_owner._blocks.TryGetValue(packet.Block, out RamBlock? block))
            {
                throw MultifdPackets.Error(at - _header.Length + 64, Raw.Description, $"unknown RAM block '{packet.Block}'; this machine has {string.Join(", ", _owner._blocks.Keys)}");
            }

            int count = 0;
            for (int i = 0; i < packet.NormalPages; i++)
            {
                ulong offset = _offsets[i];
                if (offset % RamBlock.TargetPageSize != 0 || offset > block.Size - RamBlock.TargetPageSize)
                {
                    throw MultifdPackets.Error(at - _header.Length + MultifdPackets.FixedHeaderLength + (i * 8), Raw.Description, $"page offset 0x{offset:x} is not a page of RAM block '{block.Name}' ({block.Size} bytes)");
                }

                nint address = block.HostAddress + (nint)offset;
                if (count > 0 && _segments[count - 1].Address + _segments[count - 1].Length == address)
                {
                    _segments[count - 1] = _segments[count - 1] with { Length = _segments[count - 1].Length + RamBlock.TargetPageSize };
                }
                else
                {
                    _segments[count++] = new RawSegment(address, RamBlock.TargetPageSize);
                }
            }

            return _segments.AsSpan(0, count);
        }
    }
}
