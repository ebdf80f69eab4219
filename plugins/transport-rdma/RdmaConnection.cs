using System.IO.Pipelines;
using System.Threading.Channels;
using Modular.Abstractions.Transports;

namespace Modular.Transports.Rdma;

/// <summary>
/// One migration connection over an RC queue pair. Three workers share it:
/// <list type="bullet">
/// <item>the <b>completion thread</b> (RdmaConnection.Completions.cs) polls the completion and rdma_cm
/// channels, turns completions into credits, freed slots, received messages and finished reads;</item>
/// <item>the <b>delivery task</b> (RdmaConnection.Receive.cs) copies received messages into the input
/// pipe, re-posts their receive slots and returns credits;</item>
/// <item>the <b>send pump</b> (RdmaConnection.Send.cs) copies the output pipe into send slots and posts them
/// while it holds credits.</item>
/// </list>
/// The page channel (RdmaConnection.PageChannel.cs) posts RDMA READs on the same QP from the caller's thread.
/// </summary>
internal sealed partial class RdmaConnection : IMigrationConnection, IPageChannel
{
    private readonly RdmaQueuePair _pair;
    private readonly Pipe _input = new(new PipeOptions(pauseWriterThreshold: 8 << 20, resumeWriterThreshold: 4 << 20, useSynchronizationContext: false));
    private readonly Pipe _output = new(new PipeOptions(pauseWriterThreshold: 8 << 20, resumeWriterThreshold: 4 << 20, useSynchronizationContext: false));
    private readonly CancellationTokenSource _closed = new();
    private readonly CancellationTokenSource _abort = new();
    private readonly CancellationTokenSource _sendStop = new();
    private readonly Channel<ReceivedMessage> _received = Channel.CreateUnbounded<ReceivedMessage>(
        new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
    private readonly Thread _completionThread;
    private Task _delivery = Task.CompletedTask;
    private Task _sendPump = Task.CompletedTask;
    private volatile bool _stopping;
    private volatile Exception? _failure;
    private int _disposed;

    /// <param name="pair">The connected queue pair; the connection owns it from here on.</param>
    /// <param name="remoteDescription">The peer as a URI, e.g. <c>rdma:192.168.1.5:4444</c>.</param>
    internal RdmaConnection(RdmaQueuePair pair, string remoteDescription)
    {
        _pair = pair;
        RemoteDescription = remoteDescription;
        Transport = new DuplexPipe(_input.Reader, _output.Writer);
        _completionThread = new Thread(RunCompletions) { IsBackground = true, Name = "rdma completions " + remoteDescription };
        for (int slot = StreamLayout.SendSlots - 1; slot >= 0; slot--)
        {
            _freeSendSlots.Push(slot);
        }

        for (int slot = StreamLayout.ReadSlots - 1; slot >= 0; slot--)
        {
            _freeReadSlots.Push(slot);
        }
    }

    /// <inheritdoc />
    public IDuplexPipe Transport { get; }

    /// <inheritdoc />
    public CancellationToken Closed => _closed.Token;

    /// <inheritdoc />
    public string RemoteDescription { get; }

    /// <summary>Starts the workers; called once the connection is established.</summary>
    internal void Start()
    {
        _completionThread.Start();
        _delivery = Task.Run(DeliverAsync);
        _sendPump = Task.Run(PumpSendsAsync);
    }

    /// <inheritdoc />
    public void Abort(Exception? reason = null) =>
        Fail(new TransportException(
            $"The migration connection {RemoteDescription} was aborted{(reason is null ? "" : ": " + reason.Message)}.",
            reason ?? new OperationCanceledException("Aborted.")));

    /// <summary>
    /// Fails the connection once: pending and later reads and flushes see <paramref name="error"/>, the
    /// peer gets a disconnect, <see cref="Closed"/> fires. Any thread.
    /// </summary>
    private void Fail(Exception error)
    {
        if (Interlocked.CompareExchange(ref _failure, error, null) is not null)
        {
            return;
        }

        _received.Writer.TryComplete(error);
        _abort.Cancel();
        _sendStop.Cancel();
        FailPendingReads(error);
        try
        {
            _pair.Disconnect();
        }
        catch (ObjectDisposedException)
        {
            // Already torn down.
        }

        _closed.Cancel();
    }

    /// <summary>
    /// Graceful close: ends the output (the peer sees FIN after the last byte), waits until every send
    /// has completed (RC: the peer's HCA has the bytes), disconnects, stops the workers, then destroys
    /// the verbs objects children first.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        if (Thread.CurrentThread == _completionThread)
        {
            // Called from a Closed callback on the completion thread: continue on the pool so the thread
            // can be joined before the CQ it polls is destroyed.
            await Task.Yield();
        }

        await _output.Writer.CompleteAsync().ConfigureAwait(false);
        using (var grace = new CancellationTokenSource(TimeSpan.FromSeconds(5)))
        {
            try
            {
                await _sendPump.WaitAsync(grace.Token).ConfigureAwait(false);
                await WaitForSendsToCompleteAsync(grace.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                // The peer stopped taking data; tear down anyway.
            }
        }

        Fail(new TransportException($"The migration connection {RemoteDescription} was closed."));
        _stopping = true;
        if (_completionThread.IsAlive)
        {
            _completionThread.Join();
        }

        await Task.WhenAll(_delivery, _sendPump).ConfigureAwait(false);
        lock (_pageLock)
        {
            foreach (var region in _exposed.Values)
            {
                region.Dispose();
            }

            _exposed.Clear();
        }

        // The cancellation sources are not disposed: Closed may still be read after disposal.
        _pair.Dispose();
    }

    /// <summary>A message taken from a receive slot by the completion thread, for the delivery task.</summary>
    private readonly record struct ReceivedMessage(int Slot, int Length, bool Fin);

    private sealed class DuplexPipe(PipeReader input, PipeWriter output) : IDuplexPipe
    {
        public PipeReader Input { get; } = input;

        public PipeWriter Output { get; } = output;
    }
}
