namespace Modular.Abstractions.Transports;

/// <summary>
/// Optional, on a connection: the forward path's next bytes received straight into native memory (guest
/// RAM) instead of through <see cref="IMigrationConnection.Transport"/>'s input pipe, which would cost a
/// second copy. The reader lays out where it expects the bytes to go (a precopy stream's run of page
/// records: each header word into a scratch buffer, each page into its place in guest RAM), checks what
/// came, and hands back the bytes it cannot use, which the input pipe then delivers first.
/// </summary>
/// <remarks>
/// A transport offers this only where its input pipe runs the reader inline on its receiving thread
/// (<see cref="CanReceiveDirect"/> says when): there the reader's continuation runs while the transport
/// is not receiving, and the bytes the reader was given and has not consumed are exactly the pipe's
/// unread bytes, so a receive started by the reader takes the stream's next bytes.
/// </remarks>
public interface IDirectReceive
{
    /// <summary>
    /// True when <see cref="ReceiveDirect"/> may be called now: on the transport's receiving thread, inside
    /// a read of the input pipe, with nothing handed back still waiting, and the stream not ended.
    /// </summary>
    bool CanReceiveDirect { get; }

    /// <summary>
    /// Receives the bytes the input pipe would deliver next into <paramref name="segments"/>, in order, in
    /// one receive: at least one byte, at most their total length (fewer when fewer have arrived). Call it
    /// only while <see cref="CanReceiveDirect"/> is true and after consuming everything the input pipe's
    /// last read returned (advance the reader to its end).
    /// </summary>
    /// <param name="segments">Native memory that stays valid during the call; at most 1024 segments.</param>
    /// <returns>The bytes received, or 0 when the stream ended or failed, or direct receives are not possible now: then read the input pipe as usual (it reports the end or the failure).</returns>
    /// <exception cref="InvalidOperationException">The input pipe still holds unread bytes (the caller broke the rule above).</exception>
    int ReceiveDirect(ReadOnlySpan<RawSegment> segments);

    /// <summary>
    /// Hands back bytes that <see cref="ReceiveDirect"/> delivered (or that the reader took out of the
    /// input pipe) and the reader did not use: the input pipe delivers them, in the order given, before
    /// anything received later. They are copied. Until they have been delivered,
    /// <see cref="CanReceiveDirect"/> is false.
    /// </summary>
    /// <param name="bytes">The bytes, as they came.</param>
    void GiveBack(ReadOnlySpan<byte> bytes);
}
