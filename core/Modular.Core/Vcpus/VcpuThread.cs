using Modular.Core.Interop;
using Modular.Core.Kvm;

namespace Modular.Core.Vcpus;

/// <summary>
/// A dedicated thread that runs one vCPU: the KVM_RUN loop, exit dispatch to an
/// <see cref="IVcpuExitHandler"/>, and prompt pause/resume/stop from any other thread.
/// <para>
/// Kicking, and why it is race-free:
/// <code>
///   controller (Pause/Stop)                      vCPU thread
///   lock { request = X; immediate_exit = 1;      lock { immediate_exit = 0; read request }
///          tgkill(vcpu tid, kick) }              KVM_RUN  -> EINTR (signal or immediate_exit)
///                                                sigtimedwait(kick, 0)  (else every later run exits)
/// </code>
/// Either the controller's lock comes first and the vCPU sees the request before running, or it
/// comes after and immediate_exit (set after the reset) or the signal (unblocked only inside
/// KVM_RUN) makes the run return at once. tgkill happens under the lock, and the thread takes the
/// lock to end, so the thread id is never stale.
/// </para>
/// </summary>
public sealed class VcpuThread : IDisposable
{
    private readonly KvmVcpu _vcpu;
    private readonly IVcpuExitHandler _handler;
    private readonly Thread _thread;
    private readonly object _gate = new();
    /// <summary>How long <see cref="Pause"/> spins for the vCPU to park before it blocks.</summary>
    private static readonly TimeSpan ParkSpin = TimeSpan.FromMilliseconds(5);
    /// <summary>How long <see cref="ParkWait.LendCpu"/> spins before it moves the vCPU thread to the waiter's CPU.</summary>
    private const long LendAfterMicroseconds = 40;

    private volatile VcpuRunState _state = VcpuRunState.Created;
    private bool _pauseRequested;
    private bool _stopRequested;
    private bool _halted;
    private int _threadId;
    private long _throttledUntil;
    private int _parks;
    private int _watchResume;
    private long _resumedAt;
    private int _lentCpu;

    /// <summary>Creates the thread (not started) for <paramref name="vcpu"/>.</summary>
    public VcpuThread(KvmVcpu vcpu, IVcpuExitHandler handler)
    {
        _vcpu = vcpu ?? throw new ArgumentNullException(nameof(vcpu));
        _handler = handler ?? throw new ArgumentNullException(nameof(handler));
        _thread = new Thread(ThreadMain) { IsBackground = true, Name = $"vcpu{vcpu.Id}" };
    }

    /// <summary>How many pauses moved this vCPU's thread to the pausing thread's CPU (<see cref="ParkWait.LendCpu"/>). Any thread.</summary>
    public int CpuLends => Volatile.Read(ref _lentCpu);

    /// <summary>The vCPU index.</summary>
    public int VcpuId => _vcpu.Id;

    /// <summary>The kernel thread id of the vCPU's thread (0 until it started). Any thread.</summary>
    public int KernelThreadId => Volatile.Read(ref _threadId);

    /// <summary>The current state. Any thread.</summary>
    public VcpuRunState State
    {
        get
        {
            lock (_gate)
            {
                return _state;
            }
        }
    }

    /// <summary>How many times the vCPU has parked for a pause (<see cref="Pause"/>, or a start paused). Any thread.</summary>
    public int Parks => Volatile.Read(ref _parks);

    /// <summary>
    /// Notes the moment the thread next leaves a park to run the guest (<see cref="NextResumedAt"/>):
    /// a resume marks the vCPU Running at once, but its thread may wait for a core before it runs.
    /// Any thread; call it before the resume.
    /// </summary>
    public void WatchNextResume()
    {
        Volatile.Write(ref _resumedAt, 0);
        Volatile.Write(ref _watchResume, 1);
    }

    /// <summary>The Stopwatch timestamp at which the thread left its park after <see cref="WatchNextResume"/>, or 0 before it has. Any thread.</summary>
    public long NextResumedAt => Volatile.Read(ref _resumedAt);

    /// <summary>Why the thread ended (null while it runs): "stopped", or the shutdown/failure reason.</summary>
    public string? ExitReason { get; private set; }

    /// <summary>The exception that ended the thread, if any (a failing ioctl or handler).</summary>
    public Exception? Failure { get; private set; }

    /// <summary>Starts the thread. With <paramref name="paused"/> it parks before the first KVM_RUN.</summary>
    public void Start(bool paused = false)
    {
        lock (_gate)
        {
            if (_state != VcpuRunState.Created)
            {
                throw new InvalidOperationException($"vCPU {VcpuId} thread was already started.");
            }

            _pauseRequested = paused;
            _state = VcpuRunState.Running;
        }

        _thread.Start();
        if (paused)
        {
            WaitWhileRunning();
        }
    }

    /// <summary>
    /// Kicks the vCPU out of KVM_RUN and returns once it is parked (state Paused, Halted or
    /// Stopped): its registers can then be read or written. Any thread except the vCPU's own.
    /// </summary>
    /// <param name="wait">How to wait for the park (<see cref="ParkWait"/>).</param>
    public void Pause(ParkWait wait = ParkWait.Spin)
    {
        ThrowIfOnVcpuThread(nameof(Pause));
        lock (_gate)
        {
            if (_state is VcpuRunState.Created or VcpuRunState.Stopped)
            {
                return; // nothing runs; Start(paused: true) starts parked
            }

            _pauseRequested = true;
            KickLocked();
            Monitor.PulseAll(_gate); // a vCPU sleeping off a throttle parks at once
        }

        if (wait == ParkWait.LendCpu)
        {
            WaitWhileRunningLendingCpu();
        }
        else
        {
            WaitWhileRunning();
        }
    }

    /// <summary>
    /// Makes a running vCPU sleep for <paramref name="sleep"/> outside the guest, as soon as it
    /// leaves KVM_RUN (it is kicked): QEMU's CPU throttling (auto-converge). It stays Running for
    /// everyone else; Pause and Stop end the sleep early. A paused, halted or stopped vCPU is left
    /// alone. Any thread.
    /// </summary>
    public void Throttle(TimeSpan sleep)
    {
        if (sleep <= TimeSpan.Zero)
        {
            return;
        }

        lock (_gate)
        {
            if (_state != VcpuRunState.Running || _pauseRequested || _stopRequested || _halted)
            {
                return;
            }

            _throttledUntil = System.Diagnostics.Stopwatch.GetTimestamp() + (long)(sleep.TotalSeconds * System.Diagnostics.Stopwatch.Frequency);
            KickLocked();
        }
    }

    /// <summary>Lets a paused or halted vCPU run again. Any thread.</summary>
    /// <remarks>
    /// The state is Running from here on, before the woken thread runs: it is on its way back into
    /// KVM_RUN, so a <see cref="Pause"/> right after must kick it and wait for it to park again.
    /// Left Paused until the thread woke, a stop right after a cont skipped the vCPU (whoever pauses
    /// looks for running ones) and returned with the guest about to run on.
    /// </remarks>
    public void Resume()
    {
        lock (_gate)
        {
            _pauseRequested = false;
            _halted = false;
            if (_state is VcpuRunState.Paused or VcpuRunState.Halted && !_stopRequested)
            {
                _state = VcpuRunState.Running;
            }

            Monitor.PulseAll(_gate);
        }
    }

    /// <summary>Ends the thread cleanly (kicking it out of KVM_RUN) and waits for it. Any thread except the vCPU's own.</summary>
    public void Stop()
    {
        ThrowIfOnVcpuThread(nameof(Stop));
        lock (_gate)
        {
            if (_state == VcpuRunState.Created)
            {
                _state = VcpuRunState.Stopped;
                ExitReason = "stopped before it started";
                return;
            }

            _stopRequested = true;
            if (_state != VcpuRunState.Stopped)
            {
                KickLocked();
            }

            Monitor.PulseAll(_gate);
        }

        _thread.Join();
    }

    /// <summary>Waits until the thread has ended, up to <paramref name="timeout"/>.</summary>
    public bool Join(TimeSpan timeout) => _state == VcpuRunState.Created || _thread.Join(timeout);

    /// <inheritdoc />
    public void Dispose() => Stop();

    private void KickLocked()
    {
        _vcpu.ImmediateExit = true;
        if (_threadId != 0 && _state != VcpuRunState.Stopped)
        {
            VcpuKickSignal.Send(_threadId);
        }
    }

    /// <remarks>
    /// Spins first, for up to <see cref="ParkSpin"/>: the vCPU parks about 0.1-0.2 ms after the kick
    /// (measured here), but a waiter blocked in <see cref="Monitor.Wait(object)"/> then took up to
    /// 2.5 ms to be scheduled again on this 2-core host, and a pause for a migration's switch is
    /// inside its downtime.
    /// </remarks>
    private void WaitWhileRunning()
    {
        long deadline = System.Diagnostics.Stopwatch.GetTimestamp() + (long)(ParkSpin.TotalSeconds * System.Diagnostics.Stopwatch.Frequency);
        var spin = default(SpinWait);
        while (_state == VcpuRunState.Running && System.Diagnostics.Stopwatch.GetTimestamp() < deadline)
        {
            spin.SpinOnce(sleep1Threshold: -1);
        }

        BlockWhileRunning();
    }

    /// <summary>Blocks until the vCPU has parked (its park pulses the gate).</summary>
    private void BlockWhileRunning()
    {
        lock (_gate)
        {
            while (_state == VcpuRunState.Running)
            {
                Monitor.Wait(_gate);
            }
        }
    }

    /// <summary>
    /// <see cref="ParkWait.LendCpu"/>. Measured at the postcopy switch (session 20, 120 switches per
    /// setting in alternating bench runs, the switch thread real-time): in the slow stops the kicked
    /// vCPU left KVM_RUN 3-5 ms after the kick, its thread queued behind another on the other core
    /// while the waiter's core had nothing better to do; stops over 1 ms fell from 8 of 120 (real-time,
    /// blocking, no move) to 3 of 120 with the move.
    /// </summary>
    private unsafe void WaitWhileRunningLendingCpu()
    {
        long until = System.Diagnostics.Stopwatch.GetTimestamp() + (System.Diagnostics.Stopwatch.Frequency * LendAfterMicroseconds / 1_000_000);
        while (_state == VcpuRunState.Running && System.Diagnostics.Stopwatch.GetTimestamp() < until)
        {
            Thread.SpinWait(20);
        }

        int threadId = Volatile.Read(ref _threadId);
        int cpu = Libc.SchedGetcpu();
        ulong saved = 0;
        bool moved = false;
        if (_state == VcpuRunState.Running && threadId != 0 && cpu is >= 0 and < 64
            && Libc.SchedGetaffinity(threadId, sizeof(ulong), &saved) == 0 && (saved & (1UL << cpu)) != 0)
        {
            ulong here = 1UL << cpu;
            moved = Libc.SchedSetaffinity(threadId, sizeof(ulong), &here) == 0;
            if (moved)
            {
                Interlocked.Increment(ref _lentCpu);
            }
        }

        try
        {
            BlockWhileRunning();
        }
        finally
        {
            if (moved)
            {
                _ = Libc.SchedSetaffinity(threadId, sizeof(ulong), &saved);
            }
        }
    }

    private void ThrowIfOnVcpuThread(string operation)
    {
        if (Thread.CurrentThread == _thread)
        {
            throw new InvalidOperationException($"{operation} of vCPU {VcpuId} was called on its own thread (from an exit handler); call it from another thread.");
        }
    }

    /// <summary>The vCPU thread: park while asked to, run, dispatch, repeat.</summary>
    private void ThreadMain()
    {
        string reason = "stopped";
        try
        {
            ulong runMask = VcpuKickSignal.BlockInCurrentThread();
            lock (_gate)
            {
                _threadId = Libc.Gettid();
            }

            _vcpu.SetSignalMask(runMask);
            bool exitPending = false;
            while (true)
            {
                if (exitPending && ParkRequested())
                {
                    // KVM finishes an I/O exit (advancing RIP past OUT, loading IN's value) only on
                    // the next KVM_RUN. Run once with immediate_exit so the state a paused vCPU
                    // shows is complete; it returns EINTR without entering the guest.
                    string? flushFatal = RunAndDispatch(immediateExit: true, out exitPending);
                    if (flushFatal is not null)
                    {
                        reason = flushFatal;
                        _handler.OnShutdown(VcpuId, flushFatal);
                        break;
                    }

                    if (exitPending)
                    {
                        continue; // the completion produced another exit (string I/O): go again
                    }
                }

                if (!WaitUntilRunnable())
                {
                    break;
                }

                string? fatal = RunAndDispatch(immediateExit: false, out exitPending);
                if (fatal is not null)
                {
                    reason = fatal;
                    _handler.OnShutdown(VcpuId, fatal);
                    break;
                }
            }
        }
        catch (Exception e)
        {
            Failure = e;
            reason = $"vCPU {VcpuId} failed: {e.Message}";
            try
            {
                _handler.OnShutdown(VcpuId, reason);
            }
            catch (Exception handlerFailure)
            {
                Failure = new AggregateException(e, handlerFailure);
            }
        }
        finally
        {
            lock (_gate)
            {
                ExitReason = reason;
                _state = VcpuRunState.Stopped;
                Monitor.PulseAll(_gate);
            }
        }
    }

    /// <summary>
    /// One KVM_RUN and the dispatch of its exit. <paramref name="exitPending"/> is true after a
    /// guest exit (KVM may still owe the completion of an I/O instruction), false after EINTR.
    /// Returns the reason when the vCPU cannot go on. vCPU thread.
    /// </summary>
    private string? RunAndDispatch(bool immediateExit, out bool exitPending)
    {
        if (immediateExit)
        {
            _vcpu.ImmediateExit = true;
        }

        int errno = _vcpu.RunOnce();
        if (errno == Libc.EINTR || errno == Libc.EAGAIN)
        {
            VcpuKickSignal.ConsumePending();
            exitPending = false;
            return null;
        }

        if (errno != 0)
        {
            throw new KvmIoctlException($"KVM_RUN on vCPU {VcpuId}", errno);
        }

        exitPending = true;
        string? fatal = VcpuExitDispatcher.Dispatch(_vcpu, _handler, out bool halted);
        if (halted)
        {
            lock (_gate)
            {
                _halted = true;
            }
        }

        return fatal;
    }

    private bool ParkRequested()
    {
        lock (_gate)
        {
            return _pauseRequested || _stopRequested || _halted;
        }
    }

    /// <summary>Parks while paused or halted, sleeps off a throttle (<see cref="Throttle"/>); false when asked to stop. vCPU thread.</summary>
    private bool WaitUntilRunnable()
    {
        lock (_gate)
        {
            while (true)
            {
                _vcpu.ImmediateExit = false;
                while (!_stopRequested && (_pauseRequested || _halted))
                {
                    _throttledUntil = 0;
                    if (_pauseRequested && _state != VcpuRunState.Paused)
                    {
                        Interlocked.Increment(ref _parks);
                    }

                    _state = _halted && !_pauseRequested ? VcpuRunState.Halted : VcpuRunState.Paused;
                    Monitor.PulseAll(_gate);
                    Monitor.Wait(_gate);
                    _vcpu.ImmediateExit = false;
                }

                if (_stopRequested)
                {
                    return false;
                }

                if (Volatile.Read(ref _watchResume) == 1 && Interlocked.Exchange(ref _watchResume, 0) == 1)
                {
                    Volatile.Write(ref _resumedAt, System.Diagnostics.Stopwatch.GetTimestamp());
                }

                _state = VcpuRunState.Running;
                long left = _throttledUntil - System.Diagnostics.Stopwatch.GetTimestamp();
                if (_throttledUntil == 0 || left <= 0)
                {
                    _throttledUntil = 0;
                    return true;
                }

                // Throttled: still Running to everyone else; Pause, Stop (a pulse) or the time ends it.
                _ = Monitor.Wait(_gate, TimeSpan.FromSeconds(left / (double)System.Diagnostics.Stopwatch.Frequency));
            }
        }
    }
}
