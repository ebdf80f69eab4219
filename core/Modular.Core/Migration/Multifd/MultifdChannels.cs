using Modular.Abstractions.Transports;

namespace Modular.Core.Migration.Multifd;

/// <summary>Opening a migration's multifd channels, the same way on both sides (numbers 1 to N, in order).</summary>
internal static class MultifdChannels
{
    /// <summary>How long each side waits for the other to open the next multifd channel.</summary>
    internal static readonly TimeSpan OpenTimeout = TimeSpan.FromSeconds(10);

    /// <summary>Opens (source) or accepts (destination) channels 1 to <paramref name="count"/>; on failure none stays open.</summary>
    /// <param name="connection">The migration's connection: it must offer <see cref="IRawChannels"/>.</param>
    /// <param name="count">The multifd-channels parameter.</param>
    /// <param name="peer">"source" or "destination": the side that did not open a channel in time.</param>
    /// <param name="cancellationToken">The migration's cancellation.</param>
    internal static async Task<IRawChannel[]> OpenAsync(IMigrationConnection connection, int count, string peer, CancellationToken cancellationToken)
    {
        if (connection is not IRawChannels raw)
        {
            throw new TransportException($"The multifd capability needs a transport with raw channels (IRawChannels: tcp and unix have them); {connection.RemoteDescription} has none. Turn multifd off for this transport.");
        }

        var channels = new List<IRawChannel>();
        try
        {
            for (int i = 1; i <= count; i++)
            {
                using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
                timeout.CancelAfter(OpenTimeout);
                try
                {
                    channels.Add(await raw.OpenRawChannelAsync(i, timeout.Token).ConfigureAwait(false));
                }
                catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
                {
                    throw new TransportException($"The {peer} did not open multifd channel {i} within {OpenTimeout.TotalSeconds:F0} s. Set the multifd capability (and the same multifd-channels, {count}) on the {peer} too, before the migration starts, or turn it off on both sides.");
                }
            }

            return [.. channels];
        }
        catch
        {
            Close(channels);
            throw;
        }
    }

    /// <summary>
    /// Starts a channel's thread from the thread pool and returns at once: <see cref="Thread.Start()"/>
    /// waits until the new thread runs, measured 1-14 ms per start on this busy 2-core host, once
    /// per channel inside the migration's setup. Until it runs, its work waits (in its queue, or in
    /// the socket). Wait for the returned task before joining the thread.
    /// </summary>
    internal static Task StartSoon(Thread thread) => Task.Run(() => thread.Start());

    /// <summary>Stops channel threads (aborting their channels), waits for them, and disposes the channels.</summary>
    internal static void Stop(IReadOnlyList<IChannelThread> threads)
    {
        foreach (IChannelThread thread in threads)
        {
            thread.Stop();
        }

        foreach (IChannelThread thread in threads)
        {
            thread.Join();
            thread.Raw.Dispose();
        }
    }

    /// <summary>A channel and the thread that serves it.</summary>
    internal interface IChannelThread
    {
        /// <summary>The channel.</summary>
        IRawChannel Raw { get; }

        /// <summary>Asks the thread to stop and aborts the channel (a blocked call returns). Any thread.</summary>
        void Stop();

        /// <summary>Waits until the thread has ended (at once if it never started).</summary>
        void Join();
    }

    /// <summary>Aborts and disposes <paramref name="channels"/>.</summary>
    internal static void Close(IEnumerable<IRawChannel> channels)
    {
        foreach (IRawChannel channel in channels)
        {
            channel.Abort();
            channel.Dispose();
        }
    }
}
