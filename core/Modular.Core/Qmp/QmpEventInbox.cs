namespace Modular.Core.Qmp;

/// <summary>
/// The events a <see cref="QmpClient"/> received and nobody took yet, in arrival order, plus the
/// callers waiting for one. The reader thread adds; any thread takes. An event goes to the oldest
/// waiter whose filter matches, otherwise it is kept (the oldest are dropped past a limit).
/// </summary>
internal sealed class QmpEventInbox
{
    private const int MaxKeptEvents = 10_000;

    private readonly object _gate = new();
    private readonly LinkedList<QmpEvent> _kept = new();
    private readonly LinkedList<(Func<QmpEvent, bool> Filter, TaskCompletionSource<QmpEvent> Waiter)> _waiters = new();
    private Exception? _closed;

    /// <summary>Reader thread: delivers one event.</summary>
    internal void Add(QmpEvent item)
    {
        lock (_gate)
        {
            for (var node = _waiters.First; node is not null; node = node.Next)
            {
                if (node.Value.Filter(item) && node.Value.Waiter.TrySetResult(item))
                {
                    _waiters.Remove(node);
                    return;
                }
            }

            _kept.AddLast(item);
            if (_kept.Count > MaxKeptEvents)
            {
                _kept.RemoveFirst();
            }
        }
    }

    /// <summary>Reader thread: the connection ended; every current and future wait fails with <paramref name="reason"/>.</summary>
    internal void Close(Exception reason)
    {
        lock (_gate)
        {
            _closed ??= reason;
            foreach (var (_, waiter) in _waiters)
            {
                waiter.TrySetException(reason);
            }

            _waiters.Clear();
        }
    }

    /// <summary>Any thread: the oldest kept event that matches, or the next that arrives.</summary>
    internal async Task<QmpEvent> TakeAsync(Func<QmpEvent, bool> filter, CancellationToken cancellationToken)
    {
        TaskCompletionSource<QmpEvent> waiter;
        LinkedListNode<(Func<QmpEvent, bool>, TaskCompletionSource<QmpEvent>)> registration;
        lock (_gate)
        {
            for (var node = _kept.First; node is not null; node = node.Next)
            {
                if (filter(node.Value))
                {
                    _kept.Remove(node);
                    return node.Value;
                }
            }

            if (_closed is not null)
            {
                throw _closed;
            }

            waiter = new TaskCompletionSource<QmpEvent>(TaskCreationOptions.RunContinuationsAsynchronously);
            registration = _waiters.AddLast((filter, waiter));
        }

        using (cancellationToken.Register(() =>
        {
            lock (_gate)
            {
                if (registration.List is not null)
                {
                    _waiters.Remove(registration);
                }
            }

            waiter.TrySetCanceled(cancellationToken);
        }))
        {
            return await waiter.Task.ConfigureAwait(false);
        }
    }

    /// <summary>Any thread: takes every kept event.</summary>
    internal IReadOnlyList<QmpEvent> TakeAll()
    {
        lock (_gate)
        {
            QmpEvent[] all = [.. _kept];
            _kept.Clear();
            return all;
        }
    }
}
