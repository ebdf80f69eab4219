using Modular.Core.Interop;

namespace Modular.Core.Vcpus;

/// <summary>
/// The real-time signal used to kick a vCPU thread out of KVM_RUN (KVM-NOTES "Pausing a vCPU").
/// No handler is installed: the signal stays blocked in the vCPU thread except inside KVM_RUN
/// (KVM_SET_SIGNAL_MASK), where its arrival makes KVM_RUN return EINTR; the thread then takes it
/// off the pending set with sigtimedwait. The .NET runtime catches SIGRTMIN (glibc's, 34) for
/// its own activation injection, so this uses SIGRTMIN+6; a test checks that nothing in the
/// process catches or ignores it.
/// </summary>
internal static unsafe class VcpuKickSignal
{
    /// <summary>The signal number (glibc SIGRTMIN + 6, i.e. 40 on glibc).</summary>
    internal static int Number { get; } = Libc.CurrentSigrtmin() + 6;

    /// <summary>Blocks the kick signal in the calling thread (the vCPU thread, before its first KVM_RUN) and returns the kernel sigset KVM_RUN should use: the thread's mask without the kick signal.</summary>
    internal static ulong BlockInCurrentThread()
    {
        byte* set = stackalloc byte[Libc.GlibcSigsetBytes];
        byte* old = stackalloc byte[Libc.GlibcSigsetBytes];
        Libc.Sigemptyset(set);
        Libc.Sigaddset(set, Number);
        // SAFETY: both buffers are glibc sigset_t sized (128 bytes) stack memory.
        int error = Libc.PthreadSigmask(Libc.SIG_BLOCK, set, old);
        if (error != 0)
        {
            throw new InvalidOperationException($"pthread_sigmask could not block the vCPU kick signal {Number}: {Libc.DescribeErrno(error)}.");
        }

        ulong kernelMask = *(ulong*)old; // the first 64 bits of glibc's sigset are the kernel's
        return kernelMask & ~(1UL << (Number - 1));
    }

    /// <summary>Takes a pending kick signal off the calling thread without waiting. vCPU thread.</summary>
    internal static void ConsumePending()
    {
        byte* set = stackalloc byte[Libc.GlibcSigsetBytes];
        Libc.Sigemptyset(set);
        Libc.Sigaddset(set, Number);
        var zero = default(Libc.Timespec);
        // SAFETY: set is a glibc sigset_t on the stack; info may be null; zero timeout = poll.
        while (Libc.Sigtimedwait(set, null, &zero) == Number)
        {
        }
    }

    /// <summary>Sends the kick signal to one thread of this process. Returns false when that thread is gone.</summary>
    internal static bool Send(int threadId) => Libc.Tgkill(Libc.Getpid(), threadId, Number) == 0;
}
