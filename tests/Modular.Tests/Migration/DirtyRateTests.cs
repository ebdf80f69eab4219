using System.Text.Json.Nodes;
using Modular.Core.Config;
using Modular.Core.Machine;
using Modular.Core.Migration.Engine;
using Modular.Core.Plugins;
using Modular.Core.Qmp;
using Modular.Tests.Support;

namespace Modular.Tests.Migration;

/// <summary>
/// QEMU's calc-dirty-rate and query-dirty-rate over QMP, on a synthetic machine whose workload
/// dirties a known number of pages a second: both modes measure that rate, the replies have QEMU's
/// shape, every bad argument gets QEMU's error, and dirty-bitmap and a migration refuse each other.
/// </summary>
[TestClass]
public sealed class DirtyRateTests
{
    private const long PagesPerSecond = 4000; // 15.6 MiB/s

    private static readonly Lazy<PluginCatalog> Plugins = new(() => PluginCatalog.Load([PluginCatalog.DefaultDirectory]));

    private string _dir = "";

    [TestInitialize]
    public void Setup() => _dir = TestPluginCompiler.TempDirectory("dirtyrate");

    [TestCleanup]
    public void Cleanup() => Directory.Delete(_dir, recursive: true);

    [TestMethod]
    [DataRow("dirty-bitmap")]
    [DataRow("page-sampling")]
    public async Task BothModes_MeasureTheWorkloadsRate(string mode)
    {
        using VirtualMachine machine = Machine(memory: "256M", PagesPerSecond);
        var (controller, commands) = Qmp(machine);
        machine.Start();
        await Task.Delay(1000);

        JsonObject before = await QueryAsync(commands);
        Assert.AreEqual("unstarted", before["status"]!.GetValue<string>());
        Assert.IsNull(before["dirty-rate"]);

        await ExecuteAsync(commands, "calc-dirty-rate", $$"""{ "calc-time": 1500, "calc-time-unit": "millisecond", "mode": "{{mode}}" }""");
        JsonObject measuring = await QueryAsync(commands);
        Assert.AreEqual("measuring", measuring["status"]!.GetValue<string>());
        Assert.IsNull(measuring["dirty-rate"], "no rate until measured");
        QmpException twice = await Assert.ThrowsExactlyAsync<QmpException>(() => ExecuteAsync(commands, "calc-dirty-rate", """{ "calc-time": 1 }"""));
        Assert.AreEqual("the dirty rate is already being measured.", twice.Message);

        await controller.DirtyRate.Completion.WaitAsync(TimeSpan.FromSeconds(30));
        JsonObject measured = await QueryAsync(commands);
        Assert.AreEqual("measured", measured["status"]!.GetValue<string>());
        Assert.AreEqual(mode, measured["mode"]!.GetValue<string>());
        Assert.AreEqual(1500, measured["calc-time"]!.GetValue<long>());
        Assert.AreEqual("millisecond", measured["calc-time-unit"]!.GetValue<string>());
        Assert.AreEqual(mode == "page-sampling" ? 512 : 0, measured["sample-pages"]!.GetValue<long>());
        Assert.IsTrue(Math.Abs(DateTimeOffset.UtcNow.ToUnixTimeSeconds() - measured["start-time"]!.GetValue<long>()) < 60);

        // The workload touches 4000 distinct pages a second (15.6 MiB/s) on average: on a busy host
        // it falls behind, then catches up. Sampling 128 of 65536 pages is coarser still.
        long rate = measured["dirty-rate"]!.GetValue<long>();
        double expected = PagesPerSecond * 4096.0 / (1 << 20);
        Assert.IsTrue(rate >= expected * 0.4 && rate <= expected * 2.0, $"{mode} measured {rate} MB/s; the workload dirties {expected:F1}");
        Assert.AreEqual(1L, (await QueryAsync(commands, """{ "calc-time-unit": "second" }"""))["calc-time"]!.GetValue<long>(), "reported in the unit asked for");
    }

    [TestMethod]
    public async Task PageSampling_SkipsBlocksUnder128MiB_AsQemuDoes()
    {
        using VirtualMachine machine = Machine(memory: "64M", PagesPerSecond);
        var (controller, commands) = Qmp(machine);
        machine.Start();
        await ExecuteAsync(commands, "calc-dirty-rate", """{ "calc-time": 200, "calc-time-unit": "millisecond" }""");
        await controller.DirtyRate.Completion.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.AreEqual(0L, (await QueryAsync(commands))["dirty-rate"]!.GetValue<long>());
    }

    [TestMethod]
    [DataRow("""{ "calc-time": 0 }""", "Calculation time is out of range [50ms, 60000ms].")]
    [DataRow("""{ "calc-time": 61 }""", "Calculation time is out of range [50ms, 60000ms].")]
    [DataRow("""{ "calc-time": 49, "calc-time-unit": "millisecond" }""", "Calculation time is out of range [50ms, 60000ms].")]
    [DataRow("""{ "calc-time": 1, "calc-time-unit": "minute" }""", "Parameter 'calc-time-unit' does not accept value 'minute'")]
    [DataRow("""{ "calc-time": 1, "mode": "guess" }""", "Parameter 'mode' does not accept value 'guess'")]
    [DataRow("""{ "calc-time": 1, "mode": "dirty-bitmap", "sample-pages": 256 }""", "sample-pages is used only in page-sampling mode")]
    [DataRow("""{ "calc-time": 1, "sample-pages": 100 }""", "sample-pages is out of range[128, 16384].")]
    [DataRow("""{ "calc-time": 1, "mode": "dirty-ring" }""", "mode dirty-ring is not enabled, use other method instead.")]
    public async Task ABadArgument_GetsQemusError_AndNothingStarts(string arguments, string error)
    {
        using VirtualMachine machine = Machine(memory: "32M", 0);
        var (_, commands) = Qmp(machine);
        QmpException refused = await Assert.ThrowsExactlyAsync<QmpException>(() => ExecuteAsync(commands, "calc-dirty-rate", arguments));
        Assert.AreEqual(error, refused.Message);
        Assert.AreEqual("unstarted", (await QueryAsync(commands))["status"]!.GetValue<string>());
    }

    [TestMethod]
    public async Task DirtyBitmap_AndAMigration_RefuseEachOther()
    {
        using VirtualMachine machine = Machine(memory: "32M", PagesPerSecond);
        var (controller, commands) = Qmp(machine);
        machine.Start();
        await ExecuteAsync(commands, "calc-dirty-rate", """{ "calc-time": 2, "mode": "dirty-bitmap" }""");
        QmpException migrate = Assert.ThrowsExactly<QmpException>(() => controller.StartOutgoing("tcp:127.0.0.1:9"));
        StringAssert.StartsWith(migrate.Message, "A dirty rate measurement in dirty-bitmap mode is reading the dirty log");
        await controller.DirtyRate.Completion.WaitAsync(TimeSpan.FromSeconds(30));

        await using InProcessMigrationPair pair = await InProcessMigrationPair.StartAsync(
            InProcessMigrationPair.Config(_dir, "pause-before-switchover"), InProcessMigrationPair.Config(_dir));
        QmpException measure = Assert.ThrowsExactly<QmpException>(() => pair.SourceMigration.DirtyRate.Start(1, null, null, "dirty-bitmap", pair.SourceMigration.MigrationRunning));
        StringAssert.StartsWith(measure.Message, "mode dirty-bitmap cannot measure while a migration runs");
        pair.SourceMigration.DirtyRate.Start(100, "millisecond", null, "page-sampling", pair.SourceMigration.MigrationRunning);
        await pair.SourceMigration.DirtyRate.Completion.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.AreEqual("measured", pair.SourceMigration.DirtyRate.Query()["status"]!.GetValue<string>(), "page-sampling only reads guest RAM: it may run beside a migration");
    }

    [TestMethod]
    public async Task AMachineThatGoesAwayMidMeasurement_LeavesNoRate_AndNoCrash()
    {
        VirtualMachine machine = Machine(memory: "256M", PagesPerSecond);
        var (controller, commands) = Qmp(machine);
        machine.Start();
        await ExecuteAsync(commands, "calc-dirty-rate", """{ "calc-time": 300, "calc-time-unit": "millisecond" }""");
        machine.Dispose();

        await controller.DirtyRate.Completion.WaitAsync(TimeSpan.FromSeconds(30));
        JsonObject reply = await QueryAsync(commands);
        Assert.AreEqual("measured", reply["status"]!.GetValue<string>());
        Assert.IsNull(reply["dirty-rate"], "no figure from a machine that is gone");
    }

    private VirtualMachine Machine(string memory, long pagesPerSecond)
    {
        string path = Path.Combine(_dir, Guid.NewGuid().ToString("N")[..8] + ".json");
        File.WriteAllText(path, $$"""{ "machine": { "accelerator": "synthetic", "memory": "{{memory}}", "synthetic": { "pages-per-second": {{pagesPerSecond}} } } }""");
        return VirtualMachine.Create(ConfigLoader.Load(path), Plugins.Value, MachineStartMode.Boot);
    }

    private static (MigrationController Controller, QmpCommandRegistry Commands) Qmp(VirtualMachine machine)
    {
        var controller = new MigrationController(machine, Plugins.Value);
        var commands = new QmpCommandRegistry();
        MigrationQmpCommands.Register(commands, controller);
        return (controller, commands);
    }

    private static async Task<JsonNode?> ExecuteAsync(QmpCommandRegistry commands, string name, string arguments = "{}")
    {
        Assert.IsTrue(commands.TryGet(name, out QmpCommand command));
        return await command.Handler(new QmpArguments(JsonNode.Parse(arguments)!.AsObject()), CancellationToken.None);
    }

    private static async Task<JsonObject> QueryAsync(QmpCommandRegistry commands, string arguments = "{}") =>
        (JsonObject)(await ExecuteAsync(commands, "query-dirty-rate", arguments))!;
}
