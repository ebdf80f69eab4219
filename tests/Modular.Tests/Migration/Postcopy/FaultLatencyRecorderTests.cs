using System.Diagnostics;
using Modular.Core.Migration.Postcopy;

namespace Modular.Tests.Migration.Postcopy;

/// <summary>
/// The fault-to-placement figures postcopy reports (x-modular-fault-latency): count, median, p99 and
/// max over the samples, the first one placed, and blocktime per vCPU; samples of no time are not
/// counted.
/// </summary>
[TestClass]
public sealed class FaultLatencyRecorderTests
{
    private static long Us(double microseconds) => (long)(microseconds * Stopwatch.Frequency / 1e6);

    [TestMethod]
    public void TheReportHoldsTheDistributionAndTheFirstSample()
    {
        var recorder = new FaultLatencyRecorder(vcpus: 2);
        Assert.AreEqual(0, recorder.FirstUs, "nothing recorded yet");

        // 5000 us first, then 1..99 us: 100 samples.
        recorder.Add(Us(5000), vcpu: 1);
        for (int i = 1; i < 100; i++)
        {
            recorder.Add(Us(i), vcpu: 0);
        }

        recorder.Add(0, vcpu: 0); // no time: not a sample

        var report = recorder.ToQmp();
        Assert.AreEqual(100L, report["count"]!.GetValue<long>());
        Assert.AreEqual(50.0, report["median-us"]!.GetValue<double>(), 1.0);
        Assert.AreEqual(99.0, report["p99-us"]!.GetValue<double>(), 1.0, "the 99th of 100 sorted samples");
        Assert.AreEqual(5000.0, report["max-us"]!.GetValue<double>(), 1.0);
        Assert.AreEqual(5000.0, report["first-us"]!.GetValue<double>(), 1.0, "the first sample placed, not the smallest");
        long[] blocktime = recorder.VcpuBlocktimeMs();
        Assert.AreEqual(5L, blocktime[1], "vCPU 1 waited 5 ms");
        Assert.AreEqual(4L, blocktime[0], "vCPU 0 waited 1+2+...+99 us = 4.95 ms, whole milliseconds");
    }

    [TestMethod]
    public void EveryLatencyInPlacementOrder_OnlyWhenAskedFor()
    {
        var recorder = new FaultLatencyRecorder(vcpus: 1);
        foreach (double us in new[] { 700.0, 120.2, 90.0 })
        {
            recorder.Add(Us(us), vcpu: 0);
        }

        Assert.IsNull(recorder.ToQmp()["samples-us"], "polled during postcopy: no samples, so the reply stays small");
        double[] samples = recorder.ToQmp(withSamples: true)["samples-us"]!.AsArray().Select(n => n!.GetValue<double>()).ToArray();
        Assert.HasCount(3, samples);
        Assert.AreEqual(700.0, samples[0], 0.2, "placement order, not sorted");
        Assert.AreEqual(120.2, samples[1], 0.2);
        Assert.AreEqual(90.0, samples[2], 0.2);
        Assert.AreEqual("700 120 90", recorder.Samples(), "the Debug log's whole microseconds");
    }
}
