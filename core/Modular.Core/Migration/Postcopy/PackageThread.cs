using Modular.Abstractions.Threading;

namespace Modular.Core.Migration.Postcopy;

/// <summary>
/// The thread that loads a postcopy destination's package (LISTEN, the device and vCPU sections,
/// RUN), started at POSTCOPY_ADVISE and parked until the package has been read, raised as the
/// latency threads are (<see cref="LatencyThreads"/>). The load cannot run on the thread that read
/// the package: that is the transport's receive thread, which must go on reading the stream for the
/// listen thread while a device load waits for a missing page. The load used to go to the thread
/// pool (<c>Task.Yield</c>), and a pool thread took 1.2-4.5 ms to start in half of the postcopy
/// runs measured on the reference host (the guest runs nowhere meanwhile), against 0.06-0.1 ms in
/// the others. A parked, raised thread is woken directly and takes a core at the running
/// thread's next return from the kernel.
/// </summary>
internal sealed class PackageThread : IDisposable
{
    private const int Parked = 0, Given = 1, Ended = 2;

    private readonly ManualResetEventSlim _go = new(initialState: false, spinCount: 0);
    private readonly TaskCompletionSource _done = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private Func<Task>? _work;
    private int _state;

    /// <summary>Starts the thread, parked.</summary>
    /// <param name="name">The thread's name.</param>
    internal PackageThread(string name) => new Thread(Main) { IsBackground = true, Name = name }.Start();

    /// <summary>
    /// Runs <paramref name="work"/> on the thread (blocking it there until the work's task ends) and
    /// completes with it, with its exception if it fails. Once only; after <see cref="Dispose"/>, or
    /// a second time, the work goes to the thread pool instead.
    /// </summary>
    internal Task RunAsync(Func<Task> work)
    {
        ArgumentNullException.ThrowIfNull(work);
        if (Interlocked.CompareExchange(ref _state, Given, Parked) != Parked)
        {
            return Task.Run(work);
        }

        _work = work;
        _go.Set();
        return _done.Task;
    }

    /// <summary>Ends the thread if it was never given work. Harmless more than once.</summary>
    public void Dispose()
    {
        if (Interlocked.CompareExchange(ref _state, Ended, Parked) == Parked)
        {
            _go.Set();
        }
    }

    private void Main()
    {
        _ = LatencyThreads.RaiseCurrentThread();
        _go.Wait();
        _go.Dispose(); // set once, by RunAsync or Dispose, and never touched again
        if (Volatile.Read(ref _state) != Given || _work is not { } work)
        {
            return;
        }

        try
        {
            work().GetAwaiter().GetResult();
            _done.TrySetResult();
        }
        catch (Exception ex)
        {
            _done.TrySetException(ex);
        }
    }
}
