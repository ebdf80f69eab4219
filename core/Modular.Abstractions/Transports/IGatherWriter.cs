namespace Modular.Abstractions.Transports;

/// <summary>
/// Optional, on a connection's forward-path writer (the <c>Output</c> of
/// <see cref="IMigrationConnection.Transport"/>): the writer also takes bytes by reference and sends
/// them from where they are, as one gather list with what was written around them (sendmsg(2) with
/// iovecs, like QEMU's writev over guest pages). The migration source uses it for RAM pages, which
/// then are not copied into the pipe first: on a busy host that copy was a fifth of the source's CPU.
/// </summary>
/// <remarks>
/// When the <c>FlushAsync</c> that follows a write completes, every byte written before it (by copy
/// or by reference) is out of the caller's memory, so the memory may change or go away after that,
/// not before. Memory changed between the write and the flush goes
/// out as it is at the flush; the migration source relies on dirty logging for that, as QEMU does.
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
