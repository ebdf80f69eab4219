using System.Buffers;
using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.IO.Pipelines;
using System.Threading.Channels;
using Modular.Abstractions.Plugins;
using Modular.Abstractions.Transports;
using Modular.Core.Interop;

namespace Modular.Tests.Support;

/// <summary>
/// A test transport for two machines in one process: each connection is a pair of in-memory pipes
/// (forward path, return path). With <c>offerPageChannel</c> its connections also implement
/// <see cref="IPageChannel"/>: ExposeRegion puts the block's host address and length in the
/// descriptor, and ReadAsync copies from that address (the source's RAM, in this same process) with
/// the native memcpy, as an RDMA READ would read the source's memory without its CPU.
/// </summary>
internal sealed class InProcessTransport : IMigrationTransport
{
    private readonly bool _offerPageChannel;
    private readonly ConcurrentDictionary<string, Channel<IMigrationConnection>> _listeners = new();
    private long _pageChannelReads;

    /// <param name="offerPageChannel">True: connections implement <see cref="IPageChannel"/>.</param>
    internal InProcessTransport(bool offerPageChannel) => _offerPageChannel = offerPageChannel;

    /// <summary>The scheme of its endpoints, e.g. <c>inproc:a</c>.</summary>
    internal const string Scheme = "inproc";

    /// <summary>Page-channel reads served, over all connections.</summary>
    internal long PageChannelReads => Interlocked.Read(ref _pageChannelReads);

    /// <summary>When set, every page-channel read throws this (to test the fallback).</summary>
    internal Exception? FailReadsWith { get; set; }

    /// <inheritdoc />
    public PluginAvailability Probe() => PluginAvailability.Usable;

    /// <inheritdoc />
    public ValueTask<IMigrationConnection> ConnectAsync(TransportEndpoint endpoint, CancellationToken cancellationToken = default)
    {
        if (!_listeners.TryGetValue(endpoint.Address, out Channel<IMigrationConnection>? queue))
        {
            throw new TransportException($"Nobody listens on {endpoint}.");
        }

        var forward = new Pipe(new PipeOptions(useSynchronizationContext: false));
        var back = new Pipe(new PipeOptions(useSynchronizationContext: false));
        InProcessConnection client = Create(new DuplexPipe(back.Reader, forward.Writer), endpoint.ToString());
        InProcessConnection server = Create(new DuplexPipe(forward.Reader, back.Writer), "inproc:source");
        client.Peer = server;
        server.Peer = client;
        if (!queue.Writer.TryWrite(server))
        {
            throw new TransportException($"The listener on {endpoint} is closed.");
        }

        return ValueTask.FromResult<IMigrationConnection>(client);
    }

    /// <inheritdoc />
    public ValueTask<IMigrationListener> ListenAsync(TransportEndpoint endpoint, CancellationToken cancellationToken = default)
    {
        Channel<IMigrationConnection> queue = Channel.CreateUnbounded<IMigrationConnection>();
        if (!_listeners.TryAdd(endpoint.Address, queue))
        {
            throw new TransportException($"{endpoint} is already taken.");
        }

        return ValueTask.FromResult<IMigrationListener>(new Listener(this, endpoint, queue));
    }

    private InProcessConnection Create(IDuplexPipe pipe, string remote) =>
        _offerPageChannel ? new PageChannelConnection(this, pipe, remote) : new InProcessConnection(pipe, remote);

    private sealed record DuplexPipe(PipeReader Input, PipeWriter Output) : IDuplexPipe;

    private sealed class Listener(InProcessTransport owner, TransportEndpoint endpoint, Channel<IMigrationConnection> queue) : IMigrationListener
    {
        public TransportEndpoint Endpoint => endpoint;

        public ValueTask<IMigrationConnection> AcceptAsync(CancellationToken cancellationToken = default) => queue.Reader.ReadAsync(cancellationToken);

        public ValueTask DisposeAsync()
        {
            queue.Writer.TryComplete();
            owner._listeners.TryRemove(endpoint.Address, out _);
            return ValueTask.CompletedTask;
        }
    }

    /// <summary>One end of an in-memory connection.</summary>
    private class InProcessConnection(IDuplexPipe pipe, string remote) : IMigrationConnection
    {
        private readonly CancellationTokenSource _closed = new();

        public IDuplexPipe Transport => pipe;

        public CancellationToken Closed => _closed.Token;

        public string RemoteDescription => remote;

        internal InProcessConnection? Peer { get; set; }

        public void Abort(Exception? reason = null)
        {
            var error = new TransportException($"The in-process connection to {remote} was aborted: {reason?.Message ?? "no reason given"}", reason ?? new OperationCanceledException());
            pipe.Output.Complete(error);
            pipe.Input.Complete(error);
            Peer?.CloseFromPeer();
            _closed.Cancel();
        }

        public ValueTask DisposeAsync()
        {
            pipe.Output.Complete();
            pipe.Input.Complete();
            _closed.Cancel();
            return ValueTask.CompletedTask;
        }

        private void CloseFromPeer() => _closed.Cancel();
    }

    /// <summary>A connection that also offers the one-sided page channel.</summary>
    private sealed class PageChannelConnection(InProcessTransport owner, IDuplexPipe pipe, string remote) : InProcessConnection(pipe, remote), IPageChannel
    {
        private readonly ConcurrentDictionary<string, (nint HostAddress, ulong Length)> _regions = new();

        public ReadOnlyMemory<byte> ExposeRegion(string blockId, nint hostAddress, ulong length)
        {
            byte[] descriptor = new byte[16];
            BinaryPrimitives.WriteInt64BigEndian(descriptor, hostAddress);
            BinaryPrimitives.WriteUInt64BigEndian(descriptor.AsSpan(8), length);
            return descriptor;
        }

        public void AttachRegion(string blockId, ReadOnlyMemory<byte> descriptor)
        {
            if (descriptor.Length != 16)
            {
                throw new TransportException($"The page-channel descriptor of RAM block '{blockId}' is {descriptor.Length} bytes; expected 16.");
            }

            _regions[blockId] = ((nint)BinaryPrimitives.ReadInt64BigEndian(descriptor.Span), BinaryPrimitives.ReadUInt64BigEndian(descriptor.Span[8..]));
        }

        public unsafe ValueTask ReadAsync(string blockId, ulong offset, Memory<byte> destination, CancellationToken cancellationToken = default)
        {
            if (owner.FailReadsWith is { } failure)
            {
                return ValueTask.FromException(failure);
            }

            if (!_regions.TryGetValue(blockId, out (nint HostAddress, ulong Length) region))
            {
                return ValueTask.FromException(new TransportException($"RAM block '{blockId}' was never attached to the page channel."));
            }

            if (offset > region.Length || (ulong)destination.Length > region.Length - offset)
            {
                return ValueTask.FromException(new TransportException($"A page-channel read of 0x{destination.Length:x} bytes at 0x{offset:x} lies outside RAM block '{blockId}' (0x{region.Length:x} bytes)."));
            }

            using MemoryHandle pinned = destination.Pin();
            // SAFETY: the source region [HostAddress, +Length) is the source machine's mapped RAM block in
            // this process (it stays mapped until the migration ends); the range is checked above, and the
            // destination is pinned for the copy.
            Libc.Memcpy(pinned.Pointer, (void*)(region.HostAddress + (nint)offset), (nuint)destination.Length);
            Interlocked.Increment(ref owner._pageChannelReads);
            return ValueTask.CompletedTask;
        }
    }
}
