using System.Collections.Concurrent;
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
        await using Pair pair = await Pair.StartAsync(Config(postcopy: false), Config(postcopy: false));
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
        await using Pair pair = await Pair.StartAsync(Config(postcopy: false), Config(postcopy: false));
        await pair.WaitForStatusAsync(MigrationStatus.PreSwitchover);
        await pair.ExecuteAsync("migrate_cancel", null);
        await pair.Outgoing.Completion.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.AreEqual(MigrationStatus.Cancelled, pair.Outgoing.Status.Current, pair.Outgoing.Error);
        Assert.AreEqual(QmpRunState.Running, pair.Source.RunState);
    }

    [TestMethod]
    public async Task Postcopy_PausesBeforeThePackage_ThenPostcopyActiveAndCompleted()
    {
        await using Pair pair = await Pair.StartAsync(Config(postcopy: true), Config(postcopy: true), startPostcopy: true);
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

    private ModularConfig Config(bool postcopy)
    {
        string path = Path.Combine(_dir, Guid.NewGuid().ToString("N")[..8] + ".json");
        File.WriteAllText(path, $$"""
            {
              "machine": { "accelerator": "synthetic", "memory": "32M" },
              "migration": { "capabilities": { "postcopy-ram": {{(postcopy ? "true" : "false")}}, "pause-before-switchover": true } }
            }
            """);
        return ConfigLoader.Load(path);
    }

    private sealed class Pair : IAsyncDisposable
    {
        private readonly PluginCatalog _catalog;
        private readonly QmpCommandRegistry _commands = new();

        private Pair(PluginCatalog catalog, VirtualMachine source, VirtualMachine destination)
        {
            _catalog = catalog;
            Source = source;
            Destination = destination;
        }

        public VirtualMachine Source { get; }

        public VirtualMachine Destination { get; }

        public OutgoingMigration Outgoing { get; private set; } = null!;

        public IncomingMigration Incoming { get; private set; } = null!;

        public ConcurrentQueue<MigrationStatus> Statuses { get; } = new();

        public static async Task<Pair> StartAsync(ModularConfig source, ModularConfig destination, bool startPostcopy = false)
        {
            PluginCatalog catalog = PluginCatalog.Load([PluginCatalog.DefaultDirectory]);
            var pair = new Pair(catalog, VirtualMachine.Create(source, catalog, MachineStartMode.Boot), VirtualMachine.Create(destination, catalog, MachineStartMode.Incoming));
            pair.Source.Start();
            var sourceMigration = new MigrationController(pair.Source, catalog);
            var destinationMigration = new MigrationController(pair.Destination, catalog);
            MigrationQmpCommands.Register(pair._commands, sourceMigration);
            pair.Incoming = await destinationMigration.StartIncomingAsync("tcp:127.0.0.1:0");
            pair.Outgoing = sourceMigration.StartOutgoing(pair.Incoming.BoundEndpoint!.ToString());
            pair.Outgoing.Status.Changed += pair.Statuses.Enqueue;
            if (startPostcopy)
            {
                sourceMigration.StartPostcopy();
            }

            return pair;
        }

        public async Task ExecuteAsync(string command, string? state)
        {
            Assert.IsTrue(_commands.TryGet(command, out QmpCommand registered));
            var arguments = new System.Text.Json.Nodes.JsonObject();
            if (state is not null)
            {
                arguments["state"] = state;
            }

            await registered.Handler(new QmpArguments(arguments), CancellationToken.None);
        }

        public async Task WaitForStatusAsync(MigrationStatus wanted)
        {
            var clock = System.Diagnostics.Stopwatch.StartNew();
            while (Outgoing.Status.Current != wanted)
            {
                Assert.IsLessThan(TimeSpan.FromSeconds(60), clock.Elapsed, $"never reached {wanted.ToQmp()}: {Outgoing.Status.Current.ToQmp()} {Outgoing.Error}");
                Assert.IsFalse(Outgoing.Status.IsFinished, $"finished before {wanted.ToQmp()}: {Outgoing.Status.Current.ToQmp()} {Outgoing.Error}");
                await Task.Delay(5);
            }
        }

        public async ValueTask DisposeAsync()
        {
            Outgoing?.Cancel();
            Incoming?.Cancel();
            try
            {
                await Task.WhenAll(Outgoing?.Completion ?? Task.CompletedTask, Incoming?.Completion ?? Task.CompletedTask).WaitAsync(TimeSpan.FromSeconds(30));
            }
            catch (Exception)
            {
                // A failed incoming side throws here; the test has checked what it needs.
            }

            Source.Dispose();
            Destination.Dispose();
            _catalog.Dispose();
        }
    }
}
