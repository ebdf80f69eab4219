using System.IO.Pipelines;
using Modular.Abstractions.Transports;

namespace Modular.Conformance.Transports;

public abstract partial class TransportConformanceTests
{
    private const string AbortReason = "conformance test abort";

    /// <summary>
    /// Abort fails the local end's pending and later reads with an error carrying the reason, cancels
    /// Closed, and ends the peer's pending read promptly with an error (the engine must notice a dead
    /// migration at once, not after a TCP timeout).
    /// </summary>
    [TestMethod]
    public async Task AbortEndsThePeersReadsPromptlyWithAnError()
    {
        RequireLivePeer("an abort reaching the peer");
        await using ConnectedPair pair = await ConnectPairAsync().ConfigureAwait(false);
        Task<ReadResult> localRead = Later(() => pair.Source.Transport.Input.ReadAsync());
        Task<ReadResult> peerRead = Later(() => pair.Destination.Transport.Input.ReadAsync());
        await Task.Delay(50).ConfigureAwait(false);
        Expect.That(!(peerRead.IsCompleted), $"{Name}: the peer's read completed before anything was sent or aborted.");

        pair.Source.Abort(new InvalidOperationException(AbortReason));

        Exception local = await ExpectFailureAsync(localRead, "the aborted end's own pending read").ConfigureAwait(false);
        Expect.That(Mentions(local, AbortReason),
            $"{Name}: the aborted end's read failed with {local.GetType().Name}: '{local.Message}', which does not carry the reason given to Abort ('{AbortReason}').");
        Expect.That(await Cancelled(pair.Source.Closed).ConfigureAwait(false), $"{Name}: Abort did not cancel the connection's Closed token.");
        await ExpectFailureAsync(Later(() => pair.Source.Transport.Input.ReadAsync()), "a read after Abort on the aborted end").ConfigureAwait(false);

        // The peer: its pending read must end within the deadline, with an error (or, when the transport
        // cannot carry one, with an early end of stream); data never arrives.
        Task peerEnd = DrainUntilEndAsync(pair.Destination.Transport.Input, peerRead);
        Task done = await Task.WhenAny(peerEnd, Task.Delay(AbortDeadline)).ConfigureAwait(false);
        Expect.That(done == peerEnd,
            $"{Name}: {AbortDeadline.TotalSeconds} s after Abort the peer's read is still waiting. Abort must tear the connection down so the peer's reads end at once " +
            "(for a socket: close it with SO_LINGER 0 to send a reset), not leave it open until a timeout.");
        if (peerEnd.Exception?.InnerException is AssertFailedException wrong)
        {
            throw new AssertFailedException($"{Name}: after Abort, {wrong.Message}");
        }

        if (peerEnd.IsCompletedSuccessfully)
        {
            Expect.That(PeerSeesAbortAsEndReason is not null,
                $"{Name}: after Abort the peer's read reported a clean end of stream instead of an error, so the destination cannot tell an aborted migration from a finished one. " +
                "Make the peer's read fail (a TCP reset), or, if the transport truly cannot carry an abort, override PeerSeesAbortAsEndReason with why.");
        }

        Expect.That(await Cancelled(pair.Destination.Closed).ConfigureAwait(false),
            $"{Name}: the peer's Closed token was not cancelled within {AbortDeadline.TotalSeconds} s after its read ended.");
    }

    /// <summary>Connecting where nobody listens fails with a TransportException that names the endpoint.</summary>
    [TestMethod]
    public async Task ConnectingWhereNobodyListensFailsClearly()
    {
        RequireUsable();
        TransportEndpoint unused = await UnusedEndpointAsync().ConfigureAwait(false);
        Task<IMigrationConnection> connect = Later(() => Transport.ConnectAsync(unused));
        Exception error = await ExpectFailureAsync(connect, $"ConnectAsync({unused}) where nobody listens").ConfigureAwait(false);
        CheckClearError(error, unused, "ConnectAsync where nobody listens");
    }

    /// <summary>Listening on an endpoint that is already taken fails with a TransportException that names the endpoint.</summary>
    [TestMethod]
    public async Task ListeningWhereSomeoneListensFailsClearly()
    {
        RequireUsable();
        if (EndpointCannotBeTakenReason is { } reason)
        {
            Assert.Inconclusive($"{Name}: an endpoint cannot be taken: {reason}");
        }

        await using IMigrationListener first = await Step(Transport.ListenAsync(ListenEndpoint()).AsTask(), "ListenAsync").ConfigureAwait(false);
        Exception error = await ExpectFailureAsync(Later(() => Transport.ListenAsync(first.Endpoint)), $"a second ListenAsync({first.Endpoint})").ConfigureAwait(false);
        CheckClearError(error, first.Endpoint, "ListenAsync on an endpoint already listened on");
    }

    /// <summary>Connections and listeners, once disposed, leave no file descriptor open (the test counts /proc/self/fd).</summary>
    [TestMethod]
    public async Task DisposeReleasesEveryResource()
    {
        RequireUsable();
        await RoundTrip().ConfigureAwait(false); // warm up lazily created runtime handles (epoll, thread pool)
        int before = FileDescriptors.CountStable();
        for (int i = 0; i < 5; i++)
        {
            await RoundTrip().ConfigureAwait(false);
        }

        int after = FileDescriptors.CountSettled(before);
        // Fewer than before is no leak: handles of earlier work closed meanwhile.
        Expect.That(after <= before,
            $"{Name}: after 5 connections and listeners were disposed, {after - before} more file descriptor(s) are open than before ({FileDescriptors.Describe()}). " +
            "DisposeAsync of a connection and of a listener must close every socket, file and handle they opened.");

        async Task RoundTrip()
        {
            if (StoreAndForwardReason is not null)
            {
                TransportEndpoint endpoint = ListenEndpoint();
                await SendStoreAndForwardAsync(endpoint, 10_000).ConfigureAwait(false);
                await using IMigrationListener listener = await Transport.ListenAsync(endpoint).ConfigureAwait(false);
                await using IMigrationConnection reader = await Step(listener.AcceptAsync().AsTask(), "AcceptAsync").ConfigureAwait(false);
                await new StreamPattern(1).ReceiveAsync(reader.Transport.Input, $"{Name} dispose round trip", 10_000).ConfigureAwait(false);
                return;
            }

            await using ConnectedPair pair = await ConnectPairAsync().ConfigureAwait(false);
            Task<long> receive = new StreamPattern(41).ReceiveAsync(pair.Destination.Transport.Input, $"{Name} dispose round trip", 10_000);
            await new StreamPattern(41).SendAsync(pair.Source.Transport.Output, 10_000).ConfigureAwait(false);
            await Step(receive, "receiving 10 kB").ConfigureAwait(false);
        }
    }

    private void CheckClearError(Exception error, TransportEndpoint endpoint, string what)
    {
        if (error is not TransportException)
        {
            throw new AssertFailedException(
                $"{Name}: {what} threw {error.GetType().FullName}: '{error.Message}'. Throw TransportException (wrapping the cause) so the operator gets one clear error naming the endpoint.");
        }

        Expect.That(error.Message.Contains(endpoint.Address, StringComparison.Ordinal),
            $"{Name}: {what} failed with '{error.Message}', which does not name the endpoint '{endpoint}'; say which endpoint and what to do.");
    }

    private async Task<Exception> ExpectFailureAsync<T>(Task<T> task, string what)
    {
        try
        {
            T result = await task.WaitAsync(StepTimeout).ConfigureAwait(false);
            throw new AssertFailedException(result is ReadResult r
                ? $"{Name}: {what} returned (IsCompleted={r.IsCompleted}, IsCanceled={r.IsCanceled}, {r.Buffer.Length} bytes) instead of failing with an error."
                : $"{Name}: {what} succeeded; it must fail with a TransportException.");
        }
        catch (TimeoutException)
        {
            throw new AssertFailedException($"{Name}: {what} neither failed nor finished within {StepTimeout.TotalSeconds} s; it must fail promptly.");
        }
        catch (AssertFailedException)
        {
            throw;
        }
        catch (Exception ex)
        {
            return ex;
        }
    }

    /// <summary>Runs <paramref name="operation"/> so that an exception thrown before it returns its ValueTask also ends up in the task.</summary>
    private static async Task<T> Later<T>(Func<ValueTask<T>> operation) => await operation().ConfigureAwait(false);

    private static async Task DrainUntilEndAsync(PipeReader input, Task<ReadResult> pending)
    {
        ReadResult result = await pending.ConfigureAwait(false);
        while (true)
        {
            if (result.Buffer.Length > 0)
            {
                throw new AssertFailedException($"the peer received {result.Buffer.Length} bytes although nothing was written before the abort.");
            }

            input.AdvanceTo(result.Buffer.End);
            if (result.IsCompleted)
            {
                return;
            }

            result = await input.ReadAsync().ConfigureAwait(false);
        }
    }

    private async Task<bool> Cancelled(CancellationToken token)
    {
        var deadline = DateTime.UtcNow + AbortDeadline;
        while (!token.IsCancellationRequested && DateTime.UtcNow < deadline)
        {
            await Task.Delay(20).ConfigureAwait(false);
        }

        return token.IsCancellationRequested;
    }

    private static bool Mentions(Exception error, string text)
    {
        for (Exception? e = error; e is not null; e = e.InnerException)
        {
            if (e.Message.Contains(text, StringComparison.Ordinal))
            {
                return true;
            }
        }

        return false;
    }
}
