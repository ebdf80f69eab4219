namespace Modular.Abstractions.Transports;

/// <summary>
/// Optional, on a connection's forward-path writer (the <c>Output</c> of
/// <see cref="IMigrationConnection.Transport"/>): the writer also takes bytes by reference and sends
/// them from where they are, as one gather list with what was written around them (sendmsg(2) with
/// iovecs, like QEMU's writev over guest pages). The migration source uses it for RAM pages, which
/// then are not copied into the pipe first: on a busy host that copy was a fifth of the source's CPU.
/// </summary>
/// <remarks>
/// When the <c>FlushAsync</c> that follows a write completes, the memory given by reference may be
/// unmapped, not before. A transport may hand the pages themselves to the kernel: the unix transport
/// splices them, and the peer's read copies from the pages whenever it comes, after the flush. So
/// memory changed after the write, even after the flush, may reach the peer changed; the migration
/// source relies on dirty logging for that, as QEMU does (a page written is sent again). Bytes
/// written by copy are the writer's own and never change.
/// </remarks>
public interface IGatherWriter
{
    /// <summary>
    /// Appends <paramref name="length"/> bytes at <paramref name="address"/> after everything written
    /// so far, without copying them.
    /// </summary>
    /// <param name="address">Native memory that stays mapped until the next flush has completed.</param>
    /// <param name="length">Number of bytes; at least 1.</param>
    void WriteByReference(nint address, int length);
}
