using System.Diagnostics;
using Modular.Abstractions.Faults;
using Modular.Core.Memory;
using Modular.Core.Plugins;

namespace Modular.Cli.Bench;

/// <summary>
/// The local userfaultfd round trip, for comparison with postcopy's fault latency: a thread reads a
/// missing page (natively), another thread receives the fault and places the page. Uses the
/// userfaultfd plugin through the fault-backend contract, as the engine does.
/// </summary>
internal static class FaultRoundTrip
{
    internal sealed record Result(int Count, double MedianUs, double P99Us);

    internal static Result? Measure(int faults, out string? whyNot)
    {
        using PluginCatalog plugins = PluginCatalog.Load([PluginCatalog.DefaultDirectory]);
        IFaultBackendFactory factory;
        try
        {
            factory = plugins.GetFaultBackend("userfaultfd");
        }
        catch (PluginException ex)
        {
            whyNot = ex.Message;
            return null;
        }

        if (factory.Probe() is { IsUsable: false } availability)
        {
            whyNot = availability.Reason;
            return null;
        }

        using GuestRam ram = GuestRam.Create((ulong)faults * 4096);
        RamBlock block = ram.Blocks[0];
        using IFaultBackend backend = factory.Open();
        var range = new HostRamRange(block.HostAddress, block.Size, block.HostPageSize);
        backend.Arm(range);
        byte[] page = GC.AllocateArray<byte>(4096, pinned: true);
        var placer = new Thread(() =>
        {
            Span<PageFault> batch = stackalloc PageFault[16];
            while (true)
            {
                int n = backend.ReadFaults(batch);
                if (n == 0)
                {
                    return;
                }

                for (int i = 0; i < n; i++)
                {
                    backend.PlacePage(batch[i].HostAddress & ~(nint)4095, page);
                }
            }
        }) { IsBackground = true, Name = "bench fault placer" };
        placer.Start();
        var samples = new double[faults];
        Span<byte> one = stackalloc byte[1];
        for (int i = 0; i < faults; i++)
        {
            long start = Stopwatch.GetTimestamp();
            block.CopyOut((ulong)i * 4096, one);
            samples[i] = Stopwatch.GetElapsedTime(start).TotalMicroseconds;
        }

        backend.Shutdown();
        placer.Join();
        backend.Disarm(range);
        Array.Sort(samples);
        whyNot = null;
        return new Result(faults, samples[faults / 2], samples[(int)(faults * 0.99)]);
    }
}
