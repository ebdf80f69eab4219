using Modular.Core.Config;
using Modular.Core.Machine;
using Modular.Core.Migration.Engine;
using Modular.Core.Migration.State;
using Modular.Core.Plugins;
using Modular.Core.Qmp;
using Modular.Tests.Support;

namespace Modular.Tests.Migration;

/// <summary>
/// QEMU's pause-before-switchover: the source stops the guest, enters pre-switchover and waits for
/// migrate-continue; migrate_cancel there resumes the guest. In one process, synthetic accelerator,
/// real tcp transport.
/// </summary>
[TestClass]
public sealed class PauseBeforeSwitchoverTests
{
    private string _dir = "";

    [TestInitialize]
    public void Setup() => _dir = TestPluginCompiler.TempDirectory("pause");

    [TestCleanup]
    public void Cleanup() => Directory.Delete(_dir, recursive: true);

    [TestMethod]
    public async Task Precopy_PausesStopped_UntilMigrateContinue_ThenDeviceAndCompleted()
    {
        await using InProcessMigrationPair pair = await InProcessMigrationPair.StartAsync(Config(postcopy: false), Config(postcopy: false));
        await pair.WaitForStatusAsync(MigrationStatus.PreSwitchover);
        Assert.AreEqual(QmpRunState.FinishMigrate, pair.Source.RunState, "the guest is stopped while paused");
        await Task.Delay(200);
        Assert.AreEqual(MigrationStatus.PreSwitchover, pair.Outgoing.Status.Current, "nothing goes on without migrate-continue");

        QmpException wrong = await Assert.ThrowsExactlyAsync<QmpException>(() => pair.ExecuteAsync("migrate-continue", "active"));
        Assert.AreEqual("Migration not in expected state: pre-switchover", wrong.Message);
        QmpException unknown = await Assert.ThrowsExactlyAsync<QmpException>(() => pair.ExecuteAsync("migrate-continue", "paused-ish"));
        Assert.AreEqual("Parameter 'state' does not accept value 'paused-ish'", unknown.Message);

        await pair.ExecuteAsync("migrate-continue", "pre-switchover");
        await pair.Outgoing.Completion.WaitAsync(TimeSpan.FromSeconds(60));
        await pair.Incoming.Completion.WaitAsync(TimeSpan.FromSeconds(30));
        CollectionAssert.AreEqual(
            new[] { MigrationStatus.Active, MigrationStatus.PreSwitchover, MigrationStatus.Device, MigrationStatus.Completed },
            pair.Statuses.Where(s => s != MigrationStatus.Setup).ToArray());
        Assert.AreEqual(QmpRunState.Running, pair.Destination.RunState);
        QmpException after = await Assert.ThrowsExactlyAsync<QmpException>(() => pair.ExecuteAsync("migrate-continue", "pre-switchover"));
        Assert.AreEqual("Migration not in expected state: completed", after.Message);
    }

    [TestMethod]
    public async Task CancelWhilePaused_ResumesTheGuestOnTheSource()
    {
        await using InProcessMigrationPair pair = await InProcessMigrationPair.StartAsync(Config(postcopy: false), Config(postcopy: false));
        await pair.WaitForStatusAsync(MigrationStatus.PreSwitchover);
        await pair.ExecuteAsync("migrate_cancel");
        await pair.Outgoing.Completion.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.AreEqual(MigrationStatus.Cancelled, pair.Outgoing.Status.Current, pair.Outgoing.Error);
        Assert.AreEqual(QmpRunState.Running, pair.Source.RunState);
    }

    [TestMethod]
    public async Task Postcopy_PausesBeforeThePackage_ThenPostcopyActiveAndCompleted()
    {
        await using InProcessMigrationPair pair = await InProcessMigrationPair.StartAsync(Config(postcopy: true), Config(postcopy: true), startPostcopy: true);
        await pair.WaitForStatusAsync(MigrationStatus.PreSwitchover);
        Assert.AreEqual(QmpRunState.FinishMigrate, pair.Source.RunState);
        Assert.IsFalse(pair.Outgoing.InPostcopy, "nothing of the package went out before migrate-continue");
        await pair.ExecuteAsync("migrate-continue", "pre-switchover");
        await pair.Outgoing.Completion.WaitAsync(TimeSpan.FromSeconds(60));
        await pair.Incoming.Completion.WaitAsync(TimeSpan.FromSeconds(30));
        CollectionAssert.AreEqual(
            new[] { MigrationStatus.Active, MigrationStatus.PreSwitchover, MigrationStatus.PostcopyActive, MigrationStatus.Completed },
            pair.Statuses.Where(s => s != MigrationStatus.Setup).ToArray());
    }

    private ModularConfig Config(bool postcopy) => postcopy
        ? InProcessMigrationPair.Config(_dir, "postcopy-ram", "pause-before-switchover")
        : InProcessMigrationPair.Config(_dir, "pause-before-switchover");
}
