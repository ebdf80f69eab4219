using System.CommandLine;
using System.Text.Json.Nodes;
using Modular.Core.Qmp;

namespace Modular.Cli.Commands;

/// <summary>
/// <c>modular migrate-recover --qmp SOCKET URI</c>: a destination whose postcopy migration is paused
/// (x-modular-postcopy-recovery) listens on URI for the source's <c>modular migrate --resume URI</c>
/// (QEMU's migrate-recover).
/// </summary>
internal static class MigrateRecoverCommand
{
    internal static Command Create()
    {
        var qmpOption = new Option<string>("--qmp") { Description = "The destination machine's QMP socket.", Required = true };
        var uriArgument = new Argument<string>("URI") { Description = "Where to listen for the resumed connection: tcp:HOST:PORT, unix:PATH, ..." };
        var command = new Command("migrate-recover", "On a destination whose postcopy migration is paused, listen on URI for the source to resume it (then run modular migrate --resume URI on the source).");
        command.Options.Add(qmpOption);
        command.Arguments.Add(uriArgument);
        command.SetAction(async (parse, cancellationToken) =>
        {
            string uri = parse.GetValue(uriArgument)!;
            try
            {
                await using QmpClient client = await QmpClient.ConnectAsync(parse.GetValue(qmpOption)!, cancellationToken);
                await client.ExecuteAsync("migrate-recover", new JsonObject { ["uri"] = uri }, cancellationToken);
            }
            catch (QmpConnectionException ex)
            {
                await Console.Error.WriteLineAsync("modular: " + ex.Message);
                return ExitCodes.Failure;
            }
            catch (QmpErrorException ex)
            {
                await Console.Error.WriteLineAsync($"modular: {ex.Description}");
                return ExitCodes.Failure;
            }

            Console.WriteLine($"migrate-recover: listening on {uri}; now run modular migrate --qmp SOURCE-SOCKET --resume {uri} on the source.");
            return ExitCodes.Success;
        });
        return command;
    }
}
