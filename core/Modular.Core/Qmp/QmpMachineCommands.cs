using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using Modular.Abstractions.Memory;

namespace Modular.Core.Qmp;

/// <summary>
/// The machine-facing QMP commands, with QEMU's arguments, replies and errors: <c>query-status</c>,
/// <c>stop</c>, <c>cont</c>, <c>quit</c>, <c>pmemsave</c>. They run on a QMP read loop thread, one
/// at a time. Events are emitted by the machine, not here (see <see cref="IQmpMachine"/>).
/// </summary>
public static class QmpMachineCommands
{
    private const int PmemsaveChunkBytes = 64 * 1024;

    /// <summary>Registers the commands in <paramref name="commands"/>, acting on <paramref name="machine"/>.</summary>
    /// <param name="commands">Usually <see cref="QmpServer.Commands"/>.</param>
    /// <param name="machine">The machine the commands act on.</param>
    public static void Register(QmpCommandRegistry commands, IQmpMachine machine)
    {
        ArgumentNullException.ThrowIfNull(commands);
        ArgumentNullException.ThrowIfNull(machine);
        commands.Register("query-status", (_, _) => ValueTask.FromResult<JsonNode?>(QueryStatus(machine)));
        commands.Register("stop", (_, _) =>
        {
            machine.Stop();
            return ValueTask.FromResult<JsonNode?>(null);
        });
        commands.Register("cont", (_, _) =>
        {
            Cont(machine);
            return ValueTask.FromResult<JsonNode?>(null);
        });
        commands.Register("quit", (_, _) =>
        {
            machine.Quit();
            return ValueTask.FromResult<JsonNode?>(null);
        });
        commands.Register("pmemsave", ["val", "size", "filename"], (arguments, cancellationToken) =>
        {
            long address = arguments.GetInt64("val");
            long size = arguments.GetInt64("size");
            string filename = arguments.GetString("filename");
            PhysicalMemorySave(machine.Memory, address, size, filename, cancellationToken);
            return ValueTask.FromResult<JsonNode?>(null);
        });
    }

    private static JsonObject QueryStatus(IQmpMachine machine)
    {
        QmpRunState state = machine.RunState;
        return new JsonObject
        {
            ["running"] = state == QmpRunState.Running,
            ["singlestep"] = false,
            ["status"] = state.ToQapiName(),
        };
    }

    /// <summary>QEMU's qmp_cont: refuses states that need a reset or an unfinished migration.</summary>
    private static void Cont(IQmpMachine machine)
    {
        switch (machine.RunState)
        {
            case QmpRunState.InternalError or QmpRunState.Shutdown:
                throw QmpException.Generic("Resetting the Virtual Machine is required");
            case QmpRunState.FinishMigrate:
                throw QmpException.Generic("Migration is not finalized yet");
            case QmpRunState.Suspended:
                return;
            default:
                machine.Resume();
                return;
        }
    }

    /// <summary>
    /// QEMU's qmp_pmemsave: writes guest-physical [address, address + size) to a file, reading guest
    /// RAM through <see cref="IGuestMemory.Read"/> in chunks (never a pointer into guest RAM).
    /// </summary>
    private static void PhysicalMemorySave(IGuestMemory memory, long address, long size, string filename, CancellationToken cancellationToken)
    {
        // QEMU reads unbacked addresses as junk; Modular refuses them with memsave's wording instead.
        if (address < 0 || size < 0 || !memory.Contains(new GuestPhysicalAddress((ulong)address), (ulong)size))
        {
            throw QmpException.Generic(string.Create(CultureInfo.InvariantCulture,
                $"Invalid addr 0x{unchecked((ulong)address):x16}/size {size} specified"));
        }

        FileStream file;
        try
        {
            file = new FileStream(filename, FileMode.Create, FileAccess.Write, FileShare.Read);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            throw new QmpException(QmpErrorClass.GenericError, $"Could not open '{filename}': {DescribeOpenError(filename, e)}", e);
        }

        using (file)
        {
            byte[] chunk = new byte[(int)Math.Min(PmemsaveChunkBytes, Math.Max(size, 1))];
            var at = new GuestPhysicalAddress((ulong)address);
            ulong remaining = (ulong)size;
            while (remaining > 0)
            {
                cancellationToken.ThrowIfCancellationRequested();
                int length = (int)Math.Min((ulong)chunk.Length, remaining);
                memory.Read(at, chunk.AsSpan(0, length));
                try
                {
                    file.Write(chunk, 0, length);
                }
                catch (IOException e)
                {
                    throw new QmpException(QmpErrorClass.GenericError, "An IO error has occurred", e);
                }

                at = at.Add((ulong)length);
                remaining -= (ulong)length;
            }

            try
            {
                file.Flush();
            }
            catch (IOException e)
            {
                throw new QmpException(QmpErrorClass.GenericError, "An IO error has occurred", e);
            }
        }
    }

    /// <summary>The strerror text QEMU would print after "Could not open '...': ".</summary>
    private static string DescribeOpenError(string filename, Exception e) => e switch
    {
        UnauthorizedAccessException when Directory.Exists(filename) => "Is a directory",
        FileNotFoundException or DirectoryNotFoundException => "No such file or directory",
        UnauthorizedAccessException => "Permission denied",
        IOException io when io.HResult > 0 => Marshal.GetPInvokeErrorMessage(io.HResult),
        _ => e.Message,
    };
}
