using System.Text.Json.Nodes;

namespace Modular.Tests.Support;

/// <summary>
/// Two real <c>modular</c> processes for an end-to-end migration: a destination started with
/// <c>--incoming</c> (its bound endpoint read from stderr) and a source running the same guest.
/// Disposing quits or kills both and deletes the temporary directory.
/// </summary>
internal sealed class MigrationPair : IAsyncDisposable
{
    /// <summary>The default guest RAM for the end-to-end tests: 256 MiB.</summary>
    public const ulong DefaultMemory = 256UL << 20;

    private MigrationPair(string directory) => Directory = directory;

    /// <summary>The temporary directory holding sockets, serial files and dumps.</summary>
    public string Directory { get; }

    /// <summary>The source process (may be null before it started).</summary>
    public ModularProcess Source { get; private set; } = null!;

    /// <summary>The destination process.</summary>
    public ModularProcess Destination { get; private set; } = null!;

    /// <summary>The URI the destination listens on (the real port for tcp).</summary>
    public string DestinationUri { get; private set; } = "";

    /// <summary>A pair with an empty directory and no processes yet.</summary>
    public static MigrationPair Create() => new(System.IO.Directory.CreateTempSubdirectory("me2e").FullName);

    /// <summary>
    /// Starts the destination listening on <paramref name="scheme"/> (tcp: a free port on loopback,
    /// unix: a socket in the directory) and the source; waits until the source guest printed 'A'.
    /// </summary>
    public static async Task<MigrationPair> StartAsync(string scheme, ulong memory = DefaultMemory, string kernel = "ab-guest.elf")
    {
        MigrationPair pair = Create();
        try
        {
            string listen = scheme switch
            {
                "tcp" => "tcp:127.0.0.1:0",
                "unix" => "unix:" + Path.Combine(pair.Directory, "mig.sock"),
                _ => throw new ArgumentOutOfRangeException(nameof(scheme), scheme, "tcp or unix"),
            };
            await pair.StartDestinationAsync(listen, memory, kernel);
            await pair.StartSourceAsync(memory, kernel);
            return pair;
        }
        catch
        {
            await pair.DisposeAsync();
            throw;
        }
    }

    /// <summary>Starts the destination with <c>--incoming <paramref name="listen"/></c> and reads the endpoint it bound.</summary>
    /// <param name="listen">The incoming URI.</param>
    /// <param name="memory">Guest RAM.</param>
    /// <param name="kernel">The guest image.</param>
    /// <param name="extra">More arguments for <c>modular run</c> (for example <c>--set</c> overrides).</param>
    public async Task StartDestinationAsync(string listen, ulong memory = DefaultMemory, string kernel = "ab-guest.elf", string[]? extra = null)
    {
        Destination = await ModularProcess.StartAsync("destination", Directory, kernel, memory, ["--incoming", listen, .. extra ?? []]);
        DestinationUri = (await Destination.WaitForStdErrAsync("modular: listening for an incoming migration on ", TimeSpan.FromSeconds(60))).Trim();
    }

    /// <summary>Starts the source and waits for the guest's 'A' (every page touched).</summary>
    public async Task StartSourceAsync(ulong memory = DefaultMemory, string kernel = "ab-guest.elf", char ready = 'A')
    {
        Source = await ModularProcess.StartAsync("source", Directory, kernel, memory);
        await Source.WaitForSerialAsync(ready, 1, TimeSpan.FromSeconds(60));
    }

    /// <summary>Sets migration parameters on the source (e.g. max-bandwidth).</summary>
    public Task SetSourceParametersAsync(JsonObject parameters) => Source.Qmp.ExecuteAsync("migrate-set-parameters", parameters);

    /// <summary>Runs QMP migrate on the source to <paramref name="uri"/> (the destination's by default).</summary>
    public Task MigrateAsync(string? uri = null) => Source.Qmp.ExecuteAsync("migrate", new JsonObject { ["uri"] = uri ?? DestinationUri });

    /// <summary>migrate, then polls the source's query-migrate until completed, failed or cancelled.</summary>
    public async Task<JsonObject> MigrateToEndAsync(string? uri = null, TimeSpan? timeout = null)
    {
        await MigrateAsync(uri);
        return await Source.WaitForMigrationEndAsync(timeout ?? TimeSpan.FromSeconds(120));
    }

    /// <summary>A path in the pair's directory.</summary>
    public string PathFor(string name) => Path.Combine(Directory, name);

    /// <summary>Quits or kills both processes, then deletes the directory.</summary>
    public async ValueTask DisposeAsync()
    {
        try
        {
            await Task.WhenAll(
                Source is null ? Task.CompletedTask : Source.DisposeAsync().AsTask(),
                Destination is null ? Task.CompletedTask : Destination.DisposeAsync().AsTask());
        }
        finally
        {
            try
            {
                System.IO.Directory.Delete(Directory, recursive: true);
            }
            catch (IOException)
            {
            }
        }
    }
}
