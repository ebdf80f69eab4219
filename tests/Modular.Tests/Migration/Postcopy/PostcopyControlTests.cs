using Modular.Core.Config;
using Modular.Core.Machine;
using Modular.Core.Migration.Engine;
using Modular.Core.Migration.State;
using Modular.Core.Plugins;
using Modular.Core.Qmp;
using Modular.Tests.Support;

namespace Modular.Tests.Migration.Postcopy;

/// <summary>
/// migrate-start-postcopy's errors (QEMU's), harmlessness after the end, and a destination without
/// postcopy-ram refusing POSTCOPY_ADVISE: in one process, synthetic accelerator, real tcp transport.
/// </summary>
[TestClass]
public sealed class PostcopyControlTests
{
    private string _dir = "";

    [TestInitialize]
    public void Setup() => _dir = TestPluginCompiler.TempDirectory("pcctl");

    [TestCleanup]
    public void Cleanup() => Directory.Delete(_dir, recursive: true);

    [TestMethod]
    public void StartPostcopy_WithoutTheCapability_IsRefusedWithQemusError()
    {
        using PluginCatalog catalog = PluginCatalog.Load([PluginCatalog.DefaultDirectory]);
        using VirtualMachine machine = VirtualMachine.Create(Config(postcopy: false), catalog, MachineStartMode.Boot);
        var controller = new MigrationController(machine, catalog);
        QmpException error = Assert.ThrowsExactly<QmpException>(controller.StartPostcopy);
        Assert.AreEqual("Enable postcopy with migrate_set_capability before the start of migration", error.Message);
    }

    [TestMethod]
    public void StartPostcopy_BeforeAnyMigration_IsRefusedWithQemusError()
    {
        using PluginCatalog catalog = PluginCatalog.Load([PluginCatalog.DefaultDirectory]);
        using VirtualMachine machine = VirtualMachine.Create(Config(postcopy: true), catalog, MachineStartMode.Boot);
        var controller = new MigrationController(machine, catalog);
        QmpException error = Assert.ThrowsExactly<QmpException>(controller.StartPostcopy);
        Assert.AreEqual("Postcopy must be started after migration has been started", error.Message);
    }

    [TestMethod]
    public async Task DestinationWithoutPostcopyRam_RefusesAdvise_SayingWhatToDo_AndTheSourceKeepsRunning()
    {
        await using InProcessMigrationPair pair = await InProcessMigrationPair.StartAsync(Config(postcopy: true), Config(postcopy: false));
        IncomingMigration incoming = pair.Incoming;
        OutgoingMigration outgoing = pair.Outgoing;

        IncomingMigrationException failure = await Assert.ThrowsExactlyAsync<IncomingMigrationException>(() => incoming.Completion.WaitAsync(TimeSpan.FromSeconds(30)));
        StringAssert.Contains(failure.Message, "command POSTCOPY_ADVISE");
        StringAssert.Contains(failure.Message, "the source advised postcopy, but postcopy-ram is not enabled on this destination; enable it with migrate-set-capabilities on both sides before migrating");
        await outgoing.Completion.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.AreEqual(MigrationStatus.Failed, outgoing.Status.Current);
        StringAssert.Contains(outgoing.Error, "The guest keeps running on this host.");
        Assert.AreEqual(QmpRunState.Running, pair.Source.RunState);

        // migrate-start-postcopy after the end is harmless.
        pair.SourceMigration.StartPostcopy();
        Assert.AreEqual(MigrationStatus.Failed, outgoing.Status.Current);
    }

    [TestMethod]
    public async Task MigrateCancel_DuringPostcopy_IsRefusedWithQemusError_AndTheMigrationCompletes()
    {
        // 32 MiB at 16 MB/s: postcopy lasts about two seconds, long enough to try a cancel in it.
        await using InProcessMigrationPair pair = await InProcessMigrationPair.StartAsync(
            Config(postcopy: true, preempt: true), Config(postcopy: true), startPostcopy: true,
            configureSource: migration => migration.Settings.SetParameters(null, null, maxPostcopyBandwidth: 16_000_000));
        OutgoingMigration outgoing = pair.Outgoing;
        IncomingMigration incoming = pair.Incoming;
        await pair.WaitForStatusAsync(MigrationStatus.PostcopyActive);

        QmpException refused = await Assert.ThrowsExactlyAsync<QmpException>(() => pair.ExecuteAsync("migrate_cancel"));
        Assert.AreEqual("Postcopy migration in progress, cannot cancel.", refused.Message);

        await outgoing.Completion.WaitAsync(TimeSpan.FromSeconds(60));
        await incoming.Completion.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.AreEqual(MigrationStatus.Completed, outgoing.Status.Current, outgoing.Error);
        Assert.AreEqual(QmpRunState.Running, pair.Destination.RunState);

        // After the end, migrate_cancel is harmless again.
        await pair.ExecuteAsync("migrate_cancel");
        Assert.AreEqual(MigrationStatus.Completed, outgoing.Status.Current);
    }

    private ModularConfig Config(bool postcopy, bool preempt = false)
    {
        var capabilities = new List<string>();
        if (postcopy)
        {
            capabilities.Add("postcopy-ram");
        }

        if (preempt)
        {
            capabilities.Add("postcopy-preempt");
        }

        return InProcessMigrationPair.Config(_dir, [.. capabilities]);
    }
}
