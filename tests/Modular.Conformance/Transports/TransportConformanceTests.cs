using Modular.Abstractions.Plugins;
using Modular.Abstractions.Transports;

namespace Modular.Conformance.Transports;

/// <summary>
/// The conformance suite for a transport plugin: what Modular's migration engine assumes of every
/// transport. Subclass it in your test project, mark the subclass <c>[TestClass]</c>, and supply
/// <see cref="Transport"/> and <see cref="ListenEndpoint"/>. Transports that cannot do something by
/// design (a file has no live peer) say so by overriding the matching <c>...Reason</c> property; the
/// tests that need it are then inconclusive with that reason instead of failing. When the transport's
/// probe says it is not usable on this host, every test is inconclusive with the probe's reason.
/// </summary>
public abstract partial class TransportConformanceTests
{
    /// <summary>The transport under test.</summary>
    protected abstract IMigrationTransport Transport { get; }

    /// <summary>
    /// A fresh endpoint to listen on for one test (each call may be used once): for example
    /// <c>tcp:127.0.0.1:0</c>, or a new socket path in a temporary directory.
    /// </summary>
    protected abstract TransportEndpoint ListenEndpoint();

    /// <summary>
    /// An endpoint nobody listens on. The default listens on <see cref="ListenEndpoint"/>, notes the
    /// bound endpoint, and closes the listener again.
    /// </summary>
    protected virtual async Task<TransportEndpoint> UnusedEndpointAsync()
    {
        await using IMigrationListener listener = await Transport.ListenAsync(ListenEndpoint()).ConfigureAwait(false);
        return listener.Endpoint;
    }

    /// <summary>
    /// Non-null when the transport has no live peer: the destination reads only after the source has
    /// written everything and disposed the connection (a file). Say why; the tests that need both ends
    /// at once (both directions, backpressure, abort reaching the peer, extra channels) are then
    /// inconclusive with this reason, and the others run store-and-forward.
    /// </summary>
    protected virtual string? StoreAndForwardReason => null;

    /// <summary>
    /// Non-null when an abort can reach the peer only as an early end of the stream, not as an error
    /// (a unix socket has no reset). Say why; the abort test then accepts an early end from the peer.
    /// </summary>
    protected virtual string? PeerSeesAbortAsEndReason => null;

    /// <summary>Non-null when one endpoint may be listened on twice by design (several readers of one file). Say why.</summary>
    protected virtual string? EndpointCannotBeTakenReason => null;

    /// <summary>Bytes moved by <see cref="ALargeTransferArrivesIntact"/>: 1 GiB. Lowering it weakens the test.</summary>
    protected virtual long LargeTransferBytes => 1L << 30;

    /// <summary>How far a stalled reader may fall behind the writer before the backpressure test fails: 64 MiB.</summary>
    protected virtual long BackpressureLimitBytes => 64L << 20;

    /// <summary>How long one step (connect, accept, a read after an abort) may take.</summary>
    protected virtual TimeSpan StepTimeout => TimeSpan.FromSeconds(30);

    /// <summary>How long a transfer may take.</summary>
    protected virtual TimeSpan TransferTimeout => TimeSpan.FromMinutes(10);

    /// <summary>How soon an abort must end the peer's pending read.</summary>
    protected virtual TimeSpan AbortDeadline => TimeSpan.FromSeconds(5);

    /// <summary>The transport's name in messages: its scheme.</summary>
    protected virtual string Name =>
        Transport.GetType().GetCustomAttributes(typeof(TransportMetadataAttribute), false).OfType<TransportMetadataAttribute>().FirstOrDefault()?.Scheme
        ?? Transport.GetType().Name;

    /// <summary>Listening, connecting and accepting give two connected ends that describe their peer, with the bound endpoint reported.</summary>
    [TestMethod]
    public async Task ConnectAndListen()
    {
        RequireUsable();
        TransportEndpoint asked = ListenEndpoint();
        if (StoreAndForwardReason is not null)
        {
            await SendStoreAndForwardAsync(asked, 100_000).ConfigureAwait(false);
            await using IMigrationListener fileListener = await Transport.ListenAsync(asked).ConfigureAwait(false);
            await using IMigrationConnection reader = await Step(fileListener.AcceptAsync().AsTask(), "AcceptAsync").ConfigureAwait(false);
            CheckDescription(reader, "accepted");
            await new StreamPattern(1).ReceiveAsync(reader.Transport.Input, $"{Name} store-and-forward path", 100_000).ConfigureAwait(false);
            return;
        }

        await using ConnectedPair pair = await ConnectPairAsync(asked).ConfigureAwait(false);
        Expect.Equal(asked.Scheme, pair.Listener.Endpoint.Scheme,
            $"{Name}: the listener reports the endpoint '{pair.Listener.Endpoint}', whose scheme is not '{asked.Scheme}'.");
        CheckDescription(pair.Source, "connecting");
        CheckDescription(pair.Destination, "accepted");
        Expect.That(!(pair.Source.Closed.IsCancellationRequested), $"{Name}: Closed is cancelled on a fresh connection.");
        Expect.That(!(pair.Destination.Closed.IsCancellationRequested), $"{Name}: Closed is cancelled on a freshly accepted connection.");
        Task<long> forward = new StreamPattern(1).ReceiveAsync(pair.Destination.Transport.Input, $"{Name} forward path", 100_000);
        Task<long> back = new StreamPattern(2).ReceiveAsync(pair.Source.Transport.Input, $"{Name} return path", 100_000);
        await new StreamPattern(1).SendAsync(pair.Source.Transport.Output, 100_000).ConfigureAwait(false);
        await new StreamPattern(2).SendAsync(pair.Destination.Transport.Output, 100_000).ConfigureAwait(false);
        await Step(forward, "receiving 100 kB on the forward path").ConfigureAwait(false);
        await Step(back, "receiving 100 kB on the return path").ConfigureAwait(false);
    }

    /// <summary>Skips the test (inconclusive) when the transport's probe says it is not usable on this host.</summary>
    protected void RequireUsable()
    {
        PluginAvailability availability = Transport.Probe();
        Expect.That(availability is not null, $"{Name}: Probe() returned null; return PluginAvailability.Usable or PluginAvailability.NotUsable(reason).");
        if (!availability.IsUsable)
        {
            Expect.That(!(string.IsNullOrWhiteSpace(availability.Reason)),
                $"{Name}: Probe() says the transport is not usable here but gives no reason; the operator needs to know what is missing.");
            Assert.Inconclusive($"{Name} is not usable on this host: {availability.Reason}");
        }
    }

    /// <summary>Skips the test (inconclusive) for a store-and-forward transport.</summary>
    protected void RequireLivePeer(string what)
    {
        RequireUsable();
        if (StoreAndForwardReason is { } reason)
        {
            Assert.Inconclusive($"{Name} has no live peer, so {what} does not apply: {reason}");
        }
    }

    /// <summary>Listens, accepts and connects; the pair disposes all three.</summary>
    protected async Task<ConnectedPair> ConnectPairAsync(TransportEndpoint? endpoint = null)
    {
        TransportEndpoint asked = endpoint ?? ListenEndpoint();
        IMigrationListener listener = await Step(Transport.ListenAsync(asked).AsTask(), $"ListenAsync({asked})").ConfigureAwait(false);
        try
        {
            Task<IMigrationConnection> accepting = listener.AcceptAsync().AsTask();
            IMigrationConnection source = await Step(Transport.ConnectAsync(listener.Endpoint).AsTask(), $"ConnectAsync({listener.Endpoint})").ConfigureAwait(false);
            IMigrationConnection destination;
            try
            {
                destination = await Step(accepting, $"AcceptAsync on {listener.Endpoint} after a connect").ConfigureAwait(false);
            }
            catch
            {
                await source.DisposeAsync().ConfigureAwait(false);
                throw;
            }

            return new ConnectedPair(listener, source, destination);
        }
        catch
        {
            await listener.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>Store-and-forward: connects, writes <paramref name="total"/> pattern bytes, disposes.</summary>
    protected async Task SendStoreAndForwardAsync(TransportEndpoint endpoint, long total)
    {
        await using IMigrationConnection writer = await Step(Transport.ConnectAsync(endpoint).AsTask(), $"ConnectAsync({endpoint})").ConfigureAwait(false);
        CheckDescription(writer, "connecting");
        await new StreamPattern(1).SendAsync(writer.Transport.Output, total, complete: false).WaitAsync(TransferTimeout).ConfigureAwait(false);
    }

    /// <summary>Awaits <paramref name="task"/>, failing with a message naming <paramref name="what"/> when it takes longer than <see cref="StepTimeout"/>.</summary>
    protected async Task<T> Step<T>(Task<T> task, string what)
    {
        try
        {
            return await task.WaitAsync(StepTimeout).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            throw new AssertFailedException($"{Name}: {what} did not finish within {StepTimeout.TotalSeconds} s.");
        }
    }

    /// <summary>Awaits <paramref name="task"/>, failing with a message naming <paramref name="what"/> when it takes longer than <see cref="StepTimeout"/>.</summary>
    protected async Task Step(Task task, string what)
    {
        try
        {
            await task.WaitAsync(StepTimeout).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            throw new AssertFailedException($"{Name}: {what} did not finish within {StepTimeout.TotalSeconds} s.");
        }
    }

    /// <summary>
    /// Awaits every task; the first failure is reported at once (a dead reader leaves its writer blocked
    /// on backpressure forever, so waiting for all would hang), and all must finish within <paramref name="timeout"/>.
    /// </summary>
    protected static async Task AllAsync(TimeSpan timeout, string what, params Task[] tasks)
    {
        var pending = new List<Task>(tasks);
        var deadline = DateTime.UtcNow + timeout;
        while (pending.Count > 0)
        {
            TimeSpan left = deadline - DateTime.UtcNow;
            Task done = await Task.WhenAny(pending.Append(Task.Delay(left > TimeSpan.Zero ? left : TimeSpan.Zero))).ConfigureAwait(false);
            if (!pending.Remove(done))
            {
                throw new AssertFailedException($"{what} did not finish within {timeout.TotalSeconds} s.");
            }

            await done.ConfigureAwait(false);
        }
    }

    private void CheckDescription(IMigrationConnection connection, string side)
    {
        Expect.That(!(string.IsNullOrWhiteSpace(connection.RemoteDescription)),
            $"{Name}: the {side} connection's RemoteDescription is empty; it names the peer in logs and errors (e.g. {Name}:127.0.0.1:4444).");
    }
}

/// <summary>A listener with one connected and one accepted connection; disposes all of them.</summary>
/// <param name="Listener">The listener.</param>
/// <param name="Source">The connecting end (the migration source).</param>
/// <param name="Destination">The accepted end (the migration destination).</param>
public sealed record ConnectedPair(IMigrationListener Listener, IMigrationConnection Source, IMigrationConnection Destination) : IAsyncDisposable
{
    /// <summary>Disposes both connections and the listener.</summary>
    public async ValueTask DisposeAsync()
    {
        await Source.DisposeAsync().ConfigureAwait(false);
        await Destination.DisposeAsync().ConfigureAwait(false);
        await Listener.DisposeAsync().ConfigureAwait(false);
    }
}
