using System.Diagnostics;
using System.Runtime.InteropServices;
using Modular.Abstractions.Faults;
using static Modular.FaultBackends.Userfaultfd.Interop.Libc;

namespace Modular.FaultBackends.Userfaultfd;

/// <summary>Latency of resolving userfaultfd faults, as measured by <see cref="UffdRoundTrip.Measure"/>.</summary>
/// <param name="Iterations">Faults measured.</param>
/// <param name="Median">Median time from the touch to its return.</param>
/// <param name="P99">99th percentile.</param>
/// <param name="Min">Fastest.</param>
/// <param name="Max">Slowest.</param>
public sealed record FaultLatencyStats(int Iterations, TimeSpan Median, TimeSpan P99, TimeSpan Min, TimeSpan Max);

/// <summary>
/// Measures the userfaultfd round trip the postcopy destination pays per fault: a thread touches a
/// missing 4 KiB page through native memcpy, the fault thread reads the fault and places the page
/// with UFFDIO_COPY, and the toucher resumes. For the `bench` command; never a timed test.
/// </summary>
public static class UffdRoundTrip
{
    private const int Page = 4096;

    /// <summary>Runs <paramref name="iterations"/> faults on a private mapping and returns their latency.</summary>
    /// <param name="iterations">Number of faults (pages) to measure, at least 1.</param>
    /// <exception cref="FaultBackendException">userfaultfd is not usable here.</exception>
    public static FaultLatencyStats Measure(int iterations)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(iterations, 1);
        ulong length = (ulong)iterations * Page;
        nint mapping = Mmap(0, (nuint)length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (mapping == MapFailed)
        {
            throw new FaultBackendException($"Could not map {length} bytes to measure userfaultfd latency: {Describe(Marshal.GetLastPInvokeError())}.");
        }
        long[] ticks = new long[iterations];
        byte[] contents = new byte[Page];
        contents.AsSpan().Fill(0xA5);
        Thread? toucher = null;
        try
        {
            using UserfaultfdBackend backend = UserfaultfdBackend.Open();
            backend.Arm(new HostRamRange(mapping, length, Page));
            toucher = new(() => Touch(mapping, ticks)) { IsBackground = true, Name = "uffd round trip toucher" };
            toucher.Start();
            PageFault[] faults = new PageFault[8];
            for (int resolved = 0; resolved < iterations;)
            {
                int count = backend.ReadFaults(faults);
                if (count == 0)
                {
                    break;
                }
                for (int i = 0; i < count; i++)
                {
                    backend.PlacePage(faults[i].HostAddress & ~(nint)(Page - 1), contents);
                }
                resolved += count;
            }
        }
        finally
        {
            // Disposing the backend (above) releases a toucher still waiting; it must finish before the unmap.
            toucher?.Join();
            _ = Munmap(mapping, (nuint)length);
        }
        Array.Sort(ticks);
        return new FaultLatencyStats(iterations, ToTime(ticks[(iterations - 1) / 2]),
            ToTime(ticks[Math.Min(iterations - 1, (int)Math.Ceiling(iterations * 0.99) - 1)]), ToTime(ticks[0]), ToTime(ticks[^1]));
    }

    private static unsafe void Touch(nint mapping, long[] ticks)
    {
        ulong sink = 0;
        for (int i = 0; i < ticks.Length; i++)
        {
            long start = Stopwatch.GetTimestamp();
            // SAFETY: reads 8 bytes of page i of the armed mapping into a local; the thread blocks in
            // native code until the fault thread has placed the page.
            Memcpy((nint)(&sink), mapping + (nint)i * Page, sizeof(ulong));
            ticks[i] = Stopwatch.GetTimestamp() - start;
        }
    }

    private static TimeSpan ToTime(long ticks) => TimeSpan.FromTicks(ticks * TimeSpan.TicksPerSecond / Stopwatch.Frequency);
}
