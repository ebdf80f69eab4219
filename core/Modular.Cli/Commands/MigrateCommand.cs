using System.CommandLine;
using System.Text.Json.Nodes;
using Modular.Cli.Migration;
using Modular.Core.Config;
using Modular.Core.Qmp;

namespace Modular.Cli.Commands;

/// <summary><c>modular migrate --qmp SOCKET URI</c>: migrates the machine behind a QMP socket, with progress and final figures.</summary>
internal static class MigrateCommand
{
    private static readonly Option<bool> MultifdOption = new("--multifd") { Description = "Set QEMU's multifd capability: pages travel on extra channels (the destination needs multifd and the same multifd-channels too; not with --postcopy)." };
    private static readonly Option<bool> AutoConvergeOption = new("--auto-converge") { Description = "Set QEMU's auto-converge capability: a guest that dirties memory faster than it is sent is slowed (its vCPUs throttled, in steps) until the migration converges." };
    private static readonly Option<bool> XbzrleOption = new("--xbzrle") { Description = "Set QEMU's xbzrle capability: after the first round, a page sent again goes as its difference to the copy sent before (size the cache with migrate-set-parameters xbzrle-cache-size or the config)." };
    private static readonly Option<string?> TlsCredsOption = new("--tls-creds") { Description = "tls-creds: the id of a tls-creds-x509 object of the source (endpoint client; from its config's objects or QMP object-add); the channels then use TLS (the destination needs tls-creds too, endpoint server)." };
    private static readonly Option<string?> TlsHostnameOption = new("--tls-hostname") { Description = "tls-hostname: the name to check the destination's certificate against, instead of the URI's host." };
    private static readonly Option<bool> ResumeOption = new("--resume") { Description = "Resume a paused postcopy migration (QEMU's migrate with resume=true; needs x-modular-postcopy-recovery) over URI, where the destination listens after modular migrate-recover." };
    private static readonly Option<bool> RecoveryOption = new("--postcopy-recovery") { Description = "Set x-modular-postcopy-recovery: a connection that fails during postcopy pauses the migration (postcopy-paused) instead of losing the guest; the destination needs it too (config or QMP)." };
    private static readonly Option<string?> MaxBandwidthOption = new("--max-bandwidth") { Description = "max-bandwidth: bytes per second, optionally with K, M, G (binary units); 0 for unlimited." };
    private static readonly Option<string?> MaxPostcopyBandwidthOption = new("--max-postcopy-bandwidth") { Description = "max-postcopy-bandwidth: the cap on postcopy's background pages from the switch on, bytes per second as --max-bandwidth; 0 (the default) for unlimited. Requested pages are not held back." };

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
        command.Options.Add(AutoConvergeOption);
        command.Options.Add(XbzrleOption);
        command.Options.Add(MaxBandwidthOption);
        command.Options.Add(MaxPostcopyBandwidthOption);
        command.Options.Add(TlsCredsOption);
        command.Options.Add(TlsHostnameOption);
        command.Options.Add(ResumeOption);
        command.Options.Add(RecoveryOption);
        command.Arguments.Add(uriArgument);
        command.SetAction(async (parse, cancellationToken) =>
        {
            ulong? maxBandwidth = null, maxPostcopyBandwidth = null;
            foreach ((Option<string?> option, bool postcopyCap) in new[] { (MaxBandwidthOption, false), (MaxPostcopyBandwidthOption, true) })
            {
                if (parse.GetValue(option) is not { } bandwidthText)
                {
                    continue;
                }

                if (!ByteSize.TryParse(bandwidthText, out ulong bandwidth))
                {
                    await Console.Error.WriteLineAsync($"{option.Name} '{bandwidthText}': expected bytes per second such as 100M or 1G, or 0 for unlimited.");
                    return ExitCodes.Usage;
                }

                if (postcopyCap)
                {
                    maxPostcopyBandwidth = bandwidth;
                }
                else
                {
                    maxBandwidth = bandwidth;
                }
            }

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

                    foreach ((Option<bool> option, string capability) in new[] { (AutoConvergeOption, "auto-converge"), (XbzrleOption, "xbzrle"), (RecoveryOption, "x-modular-postcopy-recovery") })
                    {
                        if (parse.GetValue(option))
                        {
                            await client.ExecuteAsync("migrate-set-capabilities", new JsonObject
                            {
                                ["capabilities"] = new JsonArray { new JsonObject { ["capability"] = capability, ["state"] = true } },
                            }, cancellationToken);
                        }
                    }

                    var parameters = new JsonObject();
                    if (parse.GetValue(downtimeOption) is long downtime)
                    {
                        parameters["downtime-limit"] = downtime;
                    }

                    if (maxBandwidth is { } cap)
                    {
                        parameters["max-bandwidth"] = cap;
                    }

                    if (maxPostcopyBandwidth is { } postcopyCap)
                    {
                        parameters["max-postcopy-bandwidth"] = postcopyCap;
                    }

                    if (parse.GetValue(TlsCredsOption) is { } tlsCreds)
                    {
                        parameters["tls-creds"] = tlsCreds;
                    }

                    if (parse.GetValue(TlsHostnameOption) is { } tlsHostname)
                    {
                        parameters["tls-hostname"] = tlsHostname;
                    }

                    if (parameters.Count > 0)
                    {
                        await client.ExecuteAsync("migrate-set-parameters", parameters, cancellationToken);
                    }

                    var watch = new MigrationWatch();
                    JsonObject result = await MigrationMonitor.MigrateAsync(client, parse.GetValue(uriArgument)!, parse.GetValue(postcopyOption), Console.Out, cancellationToken, watch, resume: parse.GetValue(ResumeOption));
                    MigrationMonitor.PrintSummary(result, Console.Out, watch);
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
