using System.CommandLine;
using System.Text.Json.Nodes;
using Modular.Cli.Migration;
using Modular.Core.Qmp;

namespace Modular.Cli.Commands;

/// <summary><c>modular migrate --qmp SOCKET URI</c>: migrates the machine behind a QMP socket, with progress and final figures.</summary>
internal static class MigrateCommand
{
    private static readonly Option<bool> MultifdOption = new("--multifd") { Description = "Set QEMU's multifd capability: pages travel on extra channels (the destination needs multifd and the same multifd-channels too; not with --postcopy)." };

    internal static Command Create()
    {
        var qmpOption = new Option<string>("--qmp") { Description = "The source machine's QMP socket.", Required = true };
        var uriArgument = new Argument<string>("URI") { Description = "Where the destination listens: tcp:HOST:PORT, unix:PATH, file:PATH, ..." };
        var postcopyOption = new Option<bool>("--postcopy") { Description = "Set postcopy-ram and postcopy-preempt and switch to postcopy right after the start (the destination needs postcopy-ram too; it follows the source's preempt channel)." };
        var downtimeOption = new Option<long?>("--downtime-limit") { Description = "downtime-limit in milliseconds." };
        var command = new Command("migrate", "Live-migrate the machine behind a QMP socket to URI, showing progress and the final statistics.");
        command.Options.Add(qmpOption);
        command.Options.Add(postcopyOption);
        command.Options.Add(MultifdOption);
        command.Options.Add(downtimeOption);
        command.Arguments.Add(uriArgument);
        command.SetAction(async (parse, cancellationToken) =>
        {
            QmpClient client;
            try
            {
                client = await QmpClient.ConnectAsync(parse.GetValue(qmpOption)!, cancellationToken);
            }
            catch (QmpConnectionException ex)
            {
                await Console.Error.WriteLineAsync("modular: " + ex.Message);
                return ExitCodes.Failure;
            }

            await using (client)
            {
                try
                {
                    if (parse.GetValue(postcopyOption))
                    {
                        await client.ExecuteAsync("migrate-set-capabilities", new JsonObject
                        {
                            ["capabilities"] = new JsonArray
                            {
                                new JsonObject { ["capability"] = "postcopy-ram", ["state"] = true },
                                new JsonObject { ["capability"] = "postcopy-preempt", ["state"] = true },
                            },
                        }, cancellationToken);
                    }

                    if (parse.GetValue(MultifdOption))
                    {
                        await client.ExecuteAsync("migrate-set-capabilities", new JsonObject
                        {
                            ["capabilities"] = new JsonArray { new JsonObject { ["capability"] = "multifd", ["state"] = true } },
                        }, cancellationToken);
                    }

                    if (parse.GetValue(downtimeOption) is long downtime)
                    {
                        await client.ExecuteAsync("migrate-set-parameters", new JsonObject { ["downtime-limit"] = downtime }, cancellationToken);
                    }

                    JsonObject result = await MigrationMonitor.MigrateAsync(client, parse.GetValue(uriArgument)!, parse.GetValue(postcopyOption), Console.Out, cancellationToken);
                    MigrationMonitor.PrintSummary(result, Console.Out);
                    return MigrationMonitor.Status(result) == "completed" ? ExitCodes.Success : ExitCodes.Failure;
                }
                catch (QmpErrorException ex)
                {
                    await Console.Error.WriteLineAsync($"modular: {ex.Description}");
                    return ExitCodes.Failure;
                }
            }
        });
        return command;
    }
}
