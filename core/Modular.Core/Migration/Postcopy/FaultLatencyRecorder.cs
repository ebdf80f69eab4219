using System.Diagnostics;
using System.Text.Json.Nodes;

namespace Modular.Core.Migration.Postcopy;

/// <summary>
/// Fault-to-placement latencies of requested pages on a postcopy destination: the blocktime total
/// and the distribution (count, median, p99, max). <see cref="Add"/> runs on the listen thread (and
/// the fault thread) and allocates nothing (a fixed ring of the most recent samples); the reports run on the QMP loop.
/// </summary>
internal sealed class FaultLatencyRecorder
{
    private const int Capacity = 1 << 16;

    private readonly long[] _samples = new long[Capacity];
    private readonly long[] _vcpuTicks;
    private long _count;
    private long _totalTicks;
    private long _maxTicks;

    /// <param name="vcpus">How many vCPUs the machine has (blocktime is kept per vCPU).</param>
    internal FaultLatencyRecorder(int vcpus = 0) => _vcpuTicks = new long[vcpus];

    /// <summary>Requested pages placed so far.</summary>
    internal long Count => Interlocked.Read(ref _count);

    /// <summary>Sum of all latencies in milliseconds (every requester, vCPU or not).</summary>
    internal long TotalMs => (long)(Interlocked.Read(ref _totalTicks) * 1000.0 / Stopwatch.Frequency);

    /// <summary>Per vCPU, the sum of the latencies of the pages it waited for, in milliseconds (QEMU's postcopy-vcpu-blocktime). QMP loop.</summary>
    internal long[] VcpuBlocktimeMs() => _vcpuTicks.Select(t => (long)(Interlocked.Read(ref t) * 1000.0 / Stopwatch.Frequency)).ToArray();

    /// <summary>
    /// Records one latency in Stopwatch ticks, and adds it to the blocktime of <paramref name="vcpu"/>
    /// when a vCPU waited for it (-1: another thread, e.g. a device load). Listen thread, preempt
    /// reader, or fault thread (page-channel reads): each claims its own slot, so they may add at once.
    /// </summary>
    internal void Add(long ticks, int vcpu = -1)
    {
        if (ticks <= 0)
        {
            return;
        }

        if ((uint)vcpu < (uint)_vcpuTicks.Length)
        {
            Interlocked.Add(ref _vcpuTicks[vcpu], ticks);
        }

        long n = Interlocked.Increment(ref _count) - 1;
        Volatile.Write(ref _samples[n % Capacity], ticks);
        Interlocked.Add(ref _totalTicks, ticks);
        long max = Interlocked.Read(ref _maxTicks);
        while (ticks > max)
        {
            long seen = Interlocked.CompareExchange(ref _maxTicks, ticks, max);
            if (seen == max)
            {
                break;
            }

            max = seen;
        }
    }

    /// <summary>The distribution in microseconds over the most recent samples (at most 65536). QMP loop.</summary>
    internal (long Count, double MedianUs, double P99Us, double MaxUs) Distribution()
    {
        long count = Count;
        long[] copy = Recorded(Capacity);
        int n = copy.Length;
        if (n == 0)
        {
            return (0, 0, 0, 0);
        }

        Array.Sort(copy);
        double us = 1e6 / Stopwatch.Frequency;
        return (count, copy[(n - 1) / 2] * us, copy[Math.Min(n - 1, (int)Math.Ceiling(n * 0.99) - 1)] * us, Interlocked.Read(ref _maxTicks) * us);
    }

    /// <summary>
    /// The first latency recorded, in microseconds (0 before any): the migration's first requested
    /// page pays first uses along the whole path, and with fewer than 100 requests it alone can be
    /// the p99. Kept only while the ring has not wrapped. QMP loop.
    /// </summary>
    internal double FirstUs => Count is > 0 and <= Capacity ? Volatile.Read(ref _samples[0]) * 1e6 / Stopwatch.Frequency : 0;

    /// <summary>
    /// The latencies in microseconds, in the order their pages were placed (at most
    /// <paramref name="limit"/>, the first ones): pooled over several runs they show a distribution
    /// no single run's few requests can (the Debug log at the end of a migration, query-migrate's
    /// samples-us once postcopy has ended). Any thread, after postcopy.
    /// </summary>
    internal double[] SamplesUs(int limit = SamplesLimit)
    {
        double us = 1e6 / Stopwatch.Frequency;
        return Recorded(limit).Select(t => Math.Round(t * us, 1)).ToArray();
    }

    /// <summary>The first <paramref name="limit"/> samples in ticks, in placement order.</summary>
    private long[] Recorded(int limit)
    {
        // A slot claimed but not yet written still reads 0 (every sample is positive): leave it out.
        int n = (int)Math.Min(Math.Min(Count, Capacity), limit);
        return _samples.Take(n).Where(t => t > 0).ToArray();
    }

    /// <summary>The most samples <see cref="SamplesUs"/> returns by default.</summary>
    internal const int SamplesLimit = 4096;

    /// <summary><see cref="SamplesUs"/> as text, whole microseconds separated by spaces, for the Debug log.</summary>
    internal string Samples() =>
        string.Join(' ', SamplesUs().Select(us => Math.Round(us).ToString(System.Globalization.CultureInfo.InvariantCulture)));

    /// <summary>The Modular-specific query-migrate member "x-modular-fault-latency". QMP loop.</summary>
    /// <param name="withSamples">Add "samples-us", every latency in placement order (the first <see cref="SamplesLimit"/>): only once postcopy has ended, so that polling during postcopy stays cheap.</param>
    internal JsonObject ToQmp(bool withSamples = false)
    {
        (long count, double median, double p99, double max) = Distribution();
        var reply = new JsonObject
        {
            ["count"] = count,
            ["median-us"] = Math.Round(median, 1),
            ["p99-us"] = Math.Round(p99, 1),
            ["max-us"] = Math.Round(max, 1),
            ["first-us"] = Math.Round(FirstUs, 1),
        };
        if (withSamples)
        {
            reply["samples-us"] = new JsonArray(SamplesUs().Select(us => (JsonNode)us).ToArray());
        }

        return reply;
    }
}
