namespace Modular.Abstractions.Transports;

/// <summary>
/// Optional, on a connection: further channels that carry bulk data between native memory without a
/// copy in user space, used from one dedicated thread each with blocking calls (QEMU's multifd
/// channels: each sends a packet header, then guest pages straight from guest RAM with one gather
/// send, and the receiver reads the pages straight into guest RAM with one scatter receive).
/// </summary>
/// <remarks>
/// Channel numbers are shared with <see cref="IExtraChannels"/>: one number is one channel, opened
/// once, either way. Both sides open the same numbers in the same order; a channel ends with its
/// connection (<see cref="IMigrationConnection.Abort"/> and disposing the connection end it too).
/// </remarks>
public interface IRawChannels
{
    /// <summary>Opens (on the connecting side) or accepts (on the listening side) raw channel number <paramref name="index"/>.</summary>
    /// <param name="index">1 and up; 0 is the main connection.</param>
    /// <param name="cancellationToken">Cancels the attempt.</param>
    ValueTask<IRawChannel> OpenRawChannelAsync(int index, CancellationToken cancellationToken = default);
}

/// <summary>
/// A byte channel between native memory: <see cref="Send"/> and <see cref="Receive"/> block until
/// every byte is out or in. One thread sends and one thread receives at a time; <see cref="Abort"/>
/// may come from any thread.
/// </summary>
public interface IRawChannel : IDisposable
{
    /// <summary>Names the channel in errors (the peer and the channel number).</summary>
    string Description { get; }

    /// <summary>Sends the segments' bytes in order, as one gather list where the transport can; returns when all were handed to the transport.</summary>
    /// <param name="segments">Native memory that stays valid until the call returns.</param>
    /// <exception cref="IOException">The channel failed or was aborted; the message names it.</exception>
    void Send(ReadOnlySpan<RawSegment> segments);

    /// <summary>Fills the segments in order with exactly their total length of bytes.</summary>
    /// <param name="segments">Native memory to write; it stays valid until the call returns.</param>
    /// <returns>False when the peer ended the channel cleanly before the first byte (nothing was written).</returns>
    /// <exception cref="EndOfStreamException">The peer ended the channel part-way.</exception>
    /// <exception cref="IOException">The channel failed or was aborted; the message names it.</exception>
    bool Receive(ReadOnlySpan<RawSegment> segments);

    /// <summary>Ends this side's sending: after the bytes already sent, the peer's <see cref="Receive"/> returns false.</summary>
    void CompleteSend();

    /// <summary>Fails blocked and later calls on both sides at once (the peer sees a reset, not a clean end). Any thread; harmless twice.</summary>
    void Abort();
}

/// <summary>A range of native memory for <see cref="IRawChannel"/>.</summary>
/// <param name="Address">Where it starts.</param>
/// <param name="Length">Its length in bytes; at least 1.</param>
public readonly record struct RawSegment(nint Address, int Length);
