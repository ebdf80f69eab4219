using Modular.Abstractions.Faults;
using static Modular.FaultBackends.Userfaultfd.Interop.Libc;

namespace Modular.FaultBackends.Userfaultfd;

/// <summary>Fault delivery: reading uffd_msg records, and the eventfd that stops the reader.</summary>
internal sealed partial class UserfaultfdBackend
{
    // At most this many messages per read(2); the buffer lives on the fault thread's stack.
    private const int MaxMessagesPerRead = 32;

    /// <inheritdoc />
    /// <remarks>
    /// Fault thread only (one reader). Allocates nothing: messages are read into a stack buffer.
    /// The userfaultfd is non-blocking, so this drains what is queued and otherwise sleeps in
    /// poll(2) on the userfaultfd and the shutdown eventfd. Messages other than page faults (none
    /// are enabled) are skipped.
    /// </remarks>
    public unsafe int ReadFaults(Span<PageFault> faults)
    {
        if (faults.IsEmpty)
        {
            throw new ArgumentException("ReadFaults needs room for at least one fault.", nameof(faults));
        }
        int capacity = Math.Min(faults.Length, MaxMessagesPerRead);
        UffdAbi.UffdMsg* messages = stackalloc UffdAbi.UffdMsg[capacity];
        while (true)
        {
            if (_shutdown)
            {
                return 0;
            }
            // SAFETY: messages has room for capacity records of sizeof(uffd_msg) = 32 bytes; the
            // kernel writes whole records only.
            nint bytes = Read(_uffd, messages, (nuint)(capacity * sizeof(UffdAbi.UffdMsg)));
            if (bytes > 0)
            {
                int stored = 0;
                int count = (int)(bytes / sizeof(UffdAbi.UffdMsg));
                for (int i = 0; i < count; i++)
                {
                    // SAFETY: i < count <= capacity, inside the stack buffer the kernel just filled.
                    ref readonly UffdAbi.UffdMsg message = ref messages[i];
                    if (message.Event != UffdAbi.EventPagefault)
                    {
                        continue;
                    }
                    faults[stored++] = new PageFault(
                        (nint)message.PagefaultAddress,
                        (int)message.PagefaultPtid,
                        (message.PagefaultFlags & UffdAbi.PagefaultFlagWrite) != 0);
                }
                if (stored > 0)
                {
                    return stored;
                }
                continue;
            }

            int errno = bytes < 0 ? System.Runtime.InteropServices.Marshal.GetLastPInvokeError() : EBADF;
            if (errno == EINTR)
            {
                continue;
            }
            if (errno != EAGAIN)
            {
                if (_shutdown)
                {
                    return 0;
                }
                throw new FaultBackendException($"Reading page faults from the userfaultfd failed: {Describe(errno)}. Postcopy cannot continue.");
            }

            errno = PollTwo(_uffd, _shutdownEvent, out short uffdEvents, out short shutdownEvents);
            if (errno == EINTR)
            {
                continue;
            }
            if (errno != 0)
            {
                throw new FaultBackendException($"Waiting for page faults on the userfaultfd failed (poll): {Describe(errno)}. Postcopy cannot continue.");
            }
            if ((shutdownEvents & POLLIN) != 0)
            {
                _shutdown = true;
                return 0;
            }
            if ((uffdEvents & (POLLERR | POLLNVAL)) != 0 && (uffdEvents & POLLIN) == 0)
            {
                throw new FaultBackendException(
                    $"The userfaultfd reported an error condition (poll revents 0x{(ushort)uffdEvents:x}); no more faults can be read.");
            }
        }
    }

    /// <inheritdoc />
    /// <remarks>Any thread; idempotent. Wakes a ReadFaults blocked in poll(2) through the eventfd.</remarks>
    public void Shutdown()
    {
        if (_disposed != 0)
        {
            return;
        }
        SignalShutdown();
    }

    private unsafe void SignalShutdown()
    {
        _shutdown = true;
        ulong one = 1;
        // SAFETY: writes the 8-byte counter increment from a local; eventfd takes exactly 8 bytes.
        // EAGAIN (counter saturated) still leaves the eventfd readable, which is all we need.
        try
        {
            _ = Write(_shutdownEvent, &one, sizeof(ulong));
        }
        catch (ObjectDisposedException)
        {
            // Disposed concurrently: closing the userfaultfd has already stopped everything.
        }
    }
}
