using Modular.Core.Config;
using Modular.Core.Machine;
using Modular.Core.Migration.Engine;
using Modular.Core.Qmp;

namespace Modular.Cli.Commands;

/// <summary>The incoming-migration part of <c>modular run</c> (QEMU's -incoming).</summary>
internal static partial class RunCommand
{
    /// <summary>Listens on migration.incoming, prints the endpoint bound, and ends the process if the migration fails.</summary>
    private static async Task StartIncomingAsync(VirtualMachine machine, MigrationController migration, ModularConfig config)
    {
        IncomingMigration incoming;
        try
        {
            incoming = await migration.StartIncomingAsync(config.Migration.Incoming!);
        }
        catch (QmpException ex)
        {
            throw new MachineCreationException($"migration.incoming: {ex.Message}", ex, isConfigError: false);
        }

        await Console.Error.WriteLineAsync($"modular: listening for an incoming migration on {incoming.BoundEndpoint}");
        _ = incoming.Completion.ContinueWith(
            task =>
            {
                if (task.IsFaulted)
                {
                    // The migration has logged it already; this is the line a user reads last.
                    string message = task.Exception!.InnerException!.Message;
                    Console.Error.WriteLine("modular: " + message);
                    machine.RequestExit(ExitCodes.Failure, "migration-failed", guest: false);
                }
            },
            TaskScheduler.Default);
    }
}
