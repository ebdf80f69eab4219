using System.Collections.Concurrent;
using Modular.Core.Config;
using Modular.Core.Machine;
using Modular.Core.Migration.Engine;
using Modular.Core.Migration.State;
using Modular.Core.Plugins;
using Modular.Core.Qmp;

namespace Modular.Tests.Support;

/// <summary>
/// Two machines in this process (synthetic accelerator, 32 MiB) migrating over the real tcp
/// transport on loopback: a running source and a destination waiting for it. QMP migration
/// commands go to the source's controller. Disposing cancels whatever still runs and frees both.
/// </summary>
internal sealed class InProcessMigrationPair : IAsyncDisposable
{
    private readonly PluginCatalog _catalog;
    private readonly QmpCommandRegistry _commands = new();

    private InProcessMigrationPair(PluginCatalog catalog, VirtualMachine source, VirtualMachine destination)
    {
        _catalog = catalog;
        Source = source;
        Destination = destination;
    }

    public VirtualMachine Source { get; }

    public VirtualMachine Destination { get; }

    public MigrationController SourceMigration { get; private set; } = null!;

    public OutgoingMigration Outgoing { get; private set; } = null!;

    public IncomingMigration Incoming { get; private set; } = null!;

    /// <summary>Every status the outgoing migration moved to, in order.</summary>
    public ConcurrentQueue<MigrationStatus> Statuses { get; } = new();

    /// <summary>
    /// A machine config file in <paramref name="directory"/>: synthetic accelerator, 32 MiB, and the
    /// given migration capabilities set to true (the others at their defaults).
    /// </summary>
    public static ModularConfig Config(string directory, params string[] capabilities)
    {
        string path = Path.Combine(directory, Guid.NewGuid().ToString("N")[..8] + ".json");
        string enabled = string.Join(", ", capabilities.Select(c => $"\"{c}\": true"));
        File.WriteAllText(path, $$"""
            {
              "machine": { "accelerator": "synthetic", "memory": "32M" },
              "migration": { "capabilities": { {{enabled}} } }
            }
            """);
        return ConfigLoader.Load(path);
    }

    /// <summary>
    /// A synthetic 32 MiB machine's config in <paramref name="directory"/> whose workload touches
    /// <paramref name="pagesPerSecond"/> pages a second (one byte each), optionally started paused
    /// (a destination that stays stopped, so that its RAM can be compared), with the given capabilities on.
    /// </summary>
    public static ModularConfig SyntheticConfig(string directory, long pagesPerSecond, bool paused, params string[] capabilities)
    {
        string path = Path.Combine(directory, Guid.NewGuid().ToString("N")[..8] + ".json");
        string enabled = string.Join(", ", capabilities.Select(c => $"\"{c}\": true"));
        File.WriteAllText(path, $$"""
            {
              "machine": { "accelerator": "synthetic", "memory": "32M", "paused": {{(paused ? "true" : "false")}}, "synthetic": { "pages-per-second": {{pagesPerSecond}} } },
              "migration": { "capabilities": { {{enabled}} } }
            }
            """);
        return ConfigLoader.Load(path);
    }

    /// <summary>Fails naming the first MiB in which the two machines' guest RAM differs.</summary>
    public static void AssertSameRam(VirtualMachine source, VirtualMachine destination)
    {
        var a = new byte[1 << 20];
        var b = new byte[1 << 20];
        ulong size = source.Ram.Size;
        for (ulong at = 0; at < size; at += (ulong)a.Length)
        {
            source.Ram.Read(new Modular.Abstractions.Memory.GuestPhysicalAddress(at), a);
            destination.Ram.Read(new Modular.Abstractions.Memory.GuestPhysicalAddress(at), b);
            if (!a.AsSpan().SequenceEqual(b))
            {
                Assert.Fail($"guest RAM differs in the MiB at 0x{at:x}");
            }
        }
    }

    /// <summary>Starts the source, the destination's listener and the migration.</summary>
    /// <param name="source">The source machine's config.</param>
    /// <param name="destination">The destination machine's config.</param>
    /// <param name="startPostcopy">migrate-start-postcopy right after the start.</param>
    /// <param name="configureSource">Runs on the source's controller before the migration starts (parameters).</param>
    /// <param name="configureDestination">Runs on the destination's controller before it listens.</param>
    /// <param name="listenUri">Where the destination listens.</param>
    public static async Task<InProcessMigrationPair> StartAsync(ModularConfig source, ModularConfig destination, bool startPostcopy = false, Action<MigrationController>? configureSource = null, Action<MigrationController>? configureDestination = null, string listenUri = "tcp:127.0.0.1:0")
    {
        PluginCatalog catalog = PluginCatalog.Load([PluginCatalog.DefaultDirectory]);
        var pair = new InProcessMigrationPair(catalog, VirtualMachine.Create(source, catalog, MachineStartMode.Boot), VirtualMachine.Create(destination, catalog, MachineStartMode.Incoming));
        pair.Source.Start();
        pair.SourceMigration = new MigrationController(pair.Source, catalog);
        var destinationMigration = new MigrationController(pair.Destination, catalog);
        MigrationQmpCommands.Register(pair._commands, pair.SourceMigration);
        configureSource?.Invoke(pair.SourceMigration);
        configureDestination?.Invoke(destinationMigration);
        pair.Incoming = await destinationMigration.StartIncomingAsync(listenUri);
        pair.Outgoing = pair.SourceMigration.StartOutgoing(pair.Incoming.BoundEndpoint!.ToString());
        pair.Outgoing.Status.Changed += pair.Statuses.Enqueue;
        if (startPostcopy)
        {
            pair.SourceMigration.StartPostcopy();
        }

        return pair;
    }

    /// <summary>Runs a QMP command on the source, with an optional "state" argument.</summary>
    public async Task ExecuteAsync(string command, string? state = null)
    {
        Assert.IsTrue(_commands.TryGet(command, out QmpCommand registered));
        var arguments = new System.Text.Json.Nodes.JsonObject();
        if (state is not null)
        {
            arguments["state"] = state;
        }

        await registered.Handler(new QmpArguments(arguments), CancellationToken.None);
    }

    /// <summary>Runs a QMP command on the source with <paramref name="arguments"/>; returns its reply.</summary>
    public async Task<System.Text.Json.Nodes.JsonNode?> ExecuteAsync(string command, System.Text.Json.Nodes.JsonObject arguments)
    {
        Assert.IsTrue(_commands.TryGet(command, out QmpCommand registered));
        return await registered.Handler(new QmpArguments(arguments), CancellationToken.None);
    }

    /// <summary>Waits (60 s at most) until the outgoing migration reaches <paramref name="wanted"/>; fails if it finishes first.</summary>
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
            // A failed side throws here; the test has checked what it needs.
        }

        Source.Dispose();
        Destination.Dispose();
        _catalog.Dispose();
    }
}
