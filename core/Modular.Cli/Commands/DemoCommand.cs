using System.CommandLine;
using Modular.Cli.Demo;
using Modular.Core.Config;

namespace Modular.Cli.Commands;

/// <summary><c>modular demo</c>: the main job on a built-in default: a local live migration of the A/B guest.</summary>
internal static class DemoCommand
{
    internal static Command Create()
    {
        var memoryOption = new Option<string>("--memory") { Description = "Guest RAM size.", DefaultValueFactory = _ => "256M" };
        var transportOption = new Option<string>("--transport") { Description = "tcp or unix.", DefaultValueFactory = _ => "tcp" };
        transportOption.AcceptOnlyFromAmong("tcp", "unix");
        var postcopyOption = new Option<bool>("--postcopy") { Description = "Switch to postcopy right after the migration starts." };
        var multifdOption = new Option<bool>("--multifd") { Description = "Set QEMU's multifd capability on both sides: pages travel on extra channels (precopy; not with --postcopy)." };
        var tlsOption = new Option<bool>("--tls") { Description = "Run every migration channel in TLS (QEMU's tls-creds), with a private CA and certificates made for the demo." };
        var recoveryOption = new Option<bool>("--recovery") { Description = "With --postcopy: pause the migration mid-postcopy (QMP migrate-pause, as a failed link would) and recover it (migrate-recover, migrate with resume), with x-modular-postcopy-recovery on both sides." };
        var syntheticOption = new Option<bool>("--synthetic") { Description = "Use the synthetic accelerator (no guest code) instead of KVM; chosen automatically when /dev/kvm is missing." };
        var command = new Command("demo", "Live-migrate the A/B test guest between two modular processes on this host and show that it kept running and lost nothing.");
        command.Options.Add(memoryOption);
        command.Options.Add(transportOption);
        command.Options.Add(postcopyOption);
        command.Options.Add(multifdOption);
        command.Options.Add(tlsOption);
        command.Options.Add(recoveryOption);
        command.Options.Add(syntheticOption);
        command.SetAction(async (parse, cancellationToken) =>
        {
            if (!ByteSize.TryParse(parse.GetValue(memoryOption), out ulong memory) || memory % 4096 != 0 || memory < (16UL << 20))
            {
                await Console.Error.WriteLineAsync($"modular: --memory '{parse.GetValue(memoryOption)}' is not a size like 256M (at least 16M, a multiple of 4096).");
                return ExitCodes.Usage;
            }

            if (parse.GetValue(multifdOption) && parse.GetValue(postcopyOption))
            {
                await Console.Error.WriteLineAsync("modular: --multifd and --postcopy cannot be combined (as in QEMU: postcopy is not yet compatible with multifd); choose one.");
                return ExitCodes.Usage;
            }

            if (parse.GetValue(recoveryOption) && !parse.GetValue(postcopyOption))
            {
                await Console.Error.WriteLineAsync("modular: --recovery shows postcopy recovery; add --postcopy.");
                return ExitCodes.Usage;
            }

            bool synthetic = parse.GetValue(syntheticOption);
            if (!synthetic && !File.Exists("/dev/kvm"))
            {
                await Console.Out.WriteLineAsync("/dev/kvm is missing: running the demo on the synthetic accelerator (no guest code; a workload thread dirties RAM like the A/B guest).");
                synthetic = true;
            }

            try
            {
                return await DemoRunner.RunAsync(new DemoOptions(memory, parse.GetValue(transportOption)!, parse.GetValue(postcopyOption), synthetic, parse.GetValue(multifdOption), parse.GetValue(tlsOption), parse.GetValue(recoveryOption)), Console.Out, cancellationToken);
            }
            catch (Exception ex) when (ex is InvalidOperationException or TimeoutException or IOException or Core.Qmp.QmpErrorException or Core.Qmp.QmpConnectionException)
            {
                await Console.Error.WriteLineAsync("modular demo: " + ex.Message);
                return ExitCodes.Failure;
            }
        });
        return command;
    }
}
