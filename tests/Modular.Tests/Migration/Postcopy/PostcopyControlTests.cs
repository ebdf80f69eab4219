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
        using PluginCatalog catalog = PluginCatalog.Load([PluginCatalog.DefaultDirectory]);
        using VirtualMachine source = VirtualMachine.Create(Config(postcopy: true), catalog, MachineStartMode.Boot);
        using VirtualMachine destination = VirtualMachine.Create(Config(postcopy: false), catalog, MachineStartMode.Incoming);
        source.Start();
        var sourceMigration = new MigrationController(source, catalog);
        var destinationMigration = new MigrationController(destination, catalog);
        IncomingMigration incoming = await destinationMigration.StartIncomingAsync("tcp:127.0.0.1:0");
        OutgoingMigration outgoing = sourceMigration.StartOutgoing(incoming.BoundEndpoint!.ToString());

        IncomingMigrationException failure = await Assert.ThrowsExactlyAsync<IncomingMigrationException>(() => incoming.Completion.WaitAsync(TimeSpan.FromSeconds(30)));
        StringAssert.Contains(failure.Message, "command POSTCOPY_ADVISE");
        StringAssert.Contains(failure.Message, "the source advised postcopy, but postcopy-ram is not enabled on this destination; enable it with migrate-set-capabilities on both sides before migrating");
        await outgoing.Completion.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.AreEqual(MigrationStatus.Failed, outgoing.Status.Current);
        StringAssert.Contains(outgoing.Error, "The guest keeps running on this host.");
        Assert.AreEqual(QmpRunState.Running, source.RunState);

        // migrate-start-postcopy after the end is harmless.
        sourceMigration.StartPostcopy();
        Assert.AreEqual(MigrationStatus.Failed, outgoing.Status.Current);
    }

    [TestMethod]
    public async Task MigrateCancel_DuringPostcopy_IsRefusedWithQemusError_AndTheMigrationCompletes()
    {
        using PluginCatalog catalog = PluginCatalog.Load([PluginCatalog.DefaultDirectory]);
        using VirtualMachine source = VirtualMachine.Create(Config(postcopy: true, preempt: true), catalog, MachineStartMode.Boot);
        using VirtualMachine destination = VirtualMachine.Create(Config(postcopy: true), catalog, MachineStartMode.Incoming);
        source.Start();
        var sourceMigration = new MigrationController(source, catalog);
        var destinationMigration = new MigrationController(destination, catalog);
        var commands = new QmpCommandRegistry();
        MigrationQmpCommands.Register(commands, sourceMigration);
        Assert.IsTrue(commands.TryGet("migrate_cancel", out QmpCommand cancel));

        // 32 MiB at 16 MB/s: postcopy lasts about two seconds, long enough to try a cancel in it.
        sourceMigration.Settings.SetParameters(null, 16_000_000);
        IncomingMigration incoming = await destinationMigration.StartIncomingAsync("tcp:127.0.0.1:0");
        OutgoingMigration outgoing = sourceMigration.StartOutgoing(incoming.BoundEndpoint!.ToString());
        sourceMigration.StartPostcopy();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (outgoing.Status.Current != MigrationStatus.PostcopyActive)
        {
            Assert.IsLessThan(TimeSpan.FromSeconds(30), clock.Elapsed, "postcopy never started: " + outgoing.Status.Current + " " + outgoing.Error);
            await Task.Delay(5);
        }

        QmpException refused = await Assert.ThrowsExactlyAsync<QmpException>(async () => await cancel.Handler(QmpArguments.Empty, CancellationToken.None));
        Assert.AreEqual("Postcopy migration in progress, cannot cancel.", refused.Message);

        await outgoing.Completion.WaitAsync(TimeSpan.FromSeconds(60));
        await incoming.Completion.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.AreEqual(MigrationStatus.Completed, outgoing.Status.Current, outgoing.Error);
        Assert.AreEqual(QmpRunState.Running, destination.RunState);

        // After the end, migrate_cancel is harmless again.
        await cancel.Handler(QmpArguments.Empty, CancellationToken.None);
        Assert.AreEqual(MigrationStatus.Completed, outgoing.Status.Current);
    }

    private ModularConfig Config(bool postcopy, bool preempt = false)
    {
        string path = Path.Combine(_dir, (postcopy ? "pc" : "plain") + (preempt ? "-preempt" : "") + ".json");
        File.WriteAllText(path, $$"""
            {
              "machine": { "accelerator": "synthetic", "memory": "32M" },
              "migration": { "capabilities": { "postcopy-ram": {{(postcopy ? "true" : "false")}}, "postcopy-preempt": {{(preempt ? "true" : "false")}} } }
            }
            """);
        return ConfigLoader.Load(path);
    }
}
