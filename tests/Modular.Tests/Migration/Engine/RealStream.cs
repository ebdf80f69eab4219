using Modular.Core.Config;
using Modular.Core.Machine;
using Modular.Core.Migration.Engine;
using Modular.Core.Migration.State;
using Modular.Core.Plugins;

namespace Modular.Tests.Migration.Engine;

/// <summary>
/// A real precopy stream, made once per test run by migrating a small synthetic-accelerator machine
/// (16 MiB, a serial port) to a file in-process, and a way to feed any bytes to a fresh destination
/// machine through the real file transport.
/// </summary>
internal static class RealStream
{
    /// <summary>The source machine's RAM.</summary>
    public const ulong Memory = 16UL << 20;

    private static readonly Lazy<PluginCatalog> Plugins = new(() => PluginCatalog.Load([PluginCatalog.DefaultDirectory]));
    private static readonly SemaphoreSlim Gate = new(1, 1);
    private static byte[]? s_stream;

    /// <summary>The loaded plugins (transports and devices), shared.</summary>
    public static PluginCatalog Catalog => Plugins.Value;

    /// <summary>A synthetic machine's config: <paramref name="memory"/> of RAM, a serial port writing nowhere.</summary>
    public static ModularConfig Config(ulong memory = Memory) => ConfigLoader.Load(null,
    [
        new("machine.accelerator", "synthetic"),
        new("machine.memory", $"{memory >> 20}M"),
        new("machine.synthetic.pages-per-second", "5000"),
        new("devices[0].id", "com1"),
        new("devices[0].type", "serial"),
        new("devices[0].output", "null"),
    ]);

    /// <summary>The stream's bytes (a copy the caller may change).</summary>
    public static async Task<byte[]> GetAsync()
    {
        await Gate.WaitAsync();
        try
        {
            s_stream ??= await MakeAsync();
            return (byte[])s_stream.Clone();
        }
        finally
        {
            Gate.Release();
        }
    }

    private static async Task<byte[]> MakeAsync()
    {
        string path = Path.Combine(Path.GetTempPath(), $"modular-real-{Environment.ProcessId}.stream");
        try
        {
            using VirtualMachine machine = VirtualMachine.Create(Config(), Catalog, MachineStartMode.Boot);
            var controller = new MigrationController(machine, Catalog);
            machine.Start();
            await Task.Delay(200);
            OutgoingMigration migration = controller.StartOutgoing("file:" + path);
            await migration.Completion.WaitAsync(TimeSpan.FromSeconds(60));
            Assert.AreEqual(MigrationStatus.Completed, migration.Status.Current, migration.Error);
            machine.RequestExit(0, "test-done", guest: false);
            return await File.ReadAllBytesAsync(path);
        }
        finally
        {
            File.Delete(path);
        }
    }

    /// <summary>
    /// Loads <paramref name="bytes"/> into a fresh destination with <paramref name="memory"/> of RAM
    /// over file:, within <paramref name="timeout"/>. Returns null when the load completed, else the
    /// incoming migration's exception.
    /// </summary>
    /// <param name="bytes">The stream.</param>
    /// <param name="timeout">How long the load may take.</param>
    /// <param name="memory">The destination's RAM.</param>
    /// <param name="overUnixSocket">Send the bytes through the unix transport (a plain socket writes them; the destination receives pages straight into RAM there) rather than reading them from a file.</param>
    /// <exception cref="TimeoutException">The load neither completed nor failed in time (a hang).</exception>
    public static async Task<IncomingMigrationException?> LoadAsync(byte[] bytes, TimeSpan timeout, ulong memory = Memory, bool overUnixSocket = false)
    {
        string path = Path.Combine(Path.GetTempPath(), $"modular-load-{Environment.ProcessId}-{Guid.NewGuid():n}.{(overUnixSocket ? "sock" : "stream")}");
        if (!overUnixSocket)
        {
            await File.WriteAllBytesAsync(path, bytes);
        }

        System.Net.Sockets.Socket? sender = null;
        try
        {
            using VirtualMachine machine = VirtualMachine.Create(Config(memory), Catalog, MachineStartMode.Incoming);
            var controller = new MigrationController(machine, Catalog);
            IncomingMigration incoming = await controller.StartIncomingAsync((overUnixSocket ? "unix:" : "file:") + path);
            machine.Start();
            Task sending = Task.CompletedTask;
            if (overUnixSocket)
            {
                sender = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified);
                await sender.ConnectAsync(new System.Net.Sockets.UnixDomainSocketEndPoint(path));
                sending = SendAsync(sender, bytes);
            }

            try
            {
                await incoming.Completion.WaitAsync(timeout);
                Assert.AreEqual(MigrationStatus.Completed, incoming.Status.Current);
                return null;
            }
            catch (IncomingMigrationException ex)
            {
                Assert.AreEqual(MigrationStatus.Failed, incoming.Status.Current);
                Assert.AreEqual(ex.Message, incoming.Error);
                return ex;
            }
            catch (TimeoutException)
            {
                incoming.Cancel();
                throw new TimeoutException($"Loading a {bytes.Length}-byte stream neither completed nor failed within {timeout}.");
            }
            finally
            {
                machine.RequestExit(0, "test-done", guest: false);
            }
        }
        finally
        {
            sender?.Dispose();
            File.Delete(path);
        }

        // All of it, then the end of the stream; a destination that failed early stops reading, and the rest no longer matters.
        static async Task SendAsync(System.Net.Sockets.Socket socket, byte[] bytes)
        {
            try
            {
                await socket.SendAsync(bytes);
                socket.Shutdown(System.Net.Sockets.SocketShutdown.Send);
            }
            catch (Exception ex) when (ex is System.Net.Sockets.SocketException or ObjectDisposedException)
            {
            }
        }
    }

    /// <summary>The offset of the first occurrence of <paramref name="pattern"/>, from <paramref name="from"/> on.</summary>
    public static int IndexOf(byte[] bytes, ReadOnlySpan<byte> pattern, int from = 0)
    {
        int i = bytes.AsSpan(from).IndexOf(pattern);
        Assert.IsGreaterThanOrEqualTo(0, i, "pattern not found in the stream");
        return from + i;
    }
}
