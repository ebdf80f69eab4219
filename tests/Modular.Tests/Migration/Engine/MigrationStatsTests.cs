using System.Text.Json.Nodes;
using Modular.Core.Migration.Engine;
using Modular.Core.Migration.State;

namespace Modular.Tests.Migration.Engine;

/// <summary>query-migrate's figures that only Modular gives: the postcopy switch in parts.</summary>
[TestClass]
public sealed class MigrationStatsTests
{
    [TestMethod]
    public void ThePostcopySwitchIsReportedInParts_OnceItHappened()
    {
        var stats = new MigrationStats();
        Assert.IsNull(stats.ToQmp(MigrationStatus.Active, error: null, outgoing: true)["x-modular-postcopy-switch"], "no switch yet");

        stats.SetPostcopySwitch(stopVcpusMs: 0.4449, discardsMs: 0.16, packageMs: 0.38, sendMs: 2.06);
        stats.SetDowntime(3);
        JsonObject reply = stats.ToQmp(MigrationStatus.PostcopyActive, error: null, outgoing: true);
        JsonNode parts = reply["x-modular-postcopy-switch"]!;
        Assert.AreEqual(0.4, parts["stop-vcpus-ms"]!.GetValue<double>());
        Assert.AreEqual(0.2, parts["sync-discards-ms"]!.GetValue<double>(), 1e-9);
        Assert.AreEqual(0.4, parts["package-ms"]!.GetValue<double>());
        Assert.AreEqual(2.1, parts["send-ms"]!.GetValue<double>());
        Assert.AreEqual(3L, reply["downtime"]!.GetValue<long>());

        Assert.IsNull(parts["pong-after-package-ms"], "no PONG to the PING after the package yet");

        // The destination's answer to the PING that follows the package joins the parts (rounded),
        // and is not one of the downtime's parts.
        stats.SetPostcopyPong(1.26);
        parts = stats.ToQmp(MigrationStatus.PostcopyActive, error: null, outgoing: true)["x-modular-postcopy-switch"]!;
        Assert.AreEqual(1.3, parts["pong-after-package-ms"]!.GetValue<double>(), 1e-9);
        Assert.AreEqual(0.4, parts["stop-vcpus-ms"]!.GetValue<double>());

        // Each reply has its own copy: one reply's changes never show in the next.
        parts["stop-vcpus-ms"] = 99.0;
        Assert.AreEqual(0.4, stats.ToQmp(MigrationStatus.Completed, error: null, outgoing: true)["x-modular-postcopy-switch"]!["stop-vcpus-ms"]!.GetValue<double>());
    }
}
