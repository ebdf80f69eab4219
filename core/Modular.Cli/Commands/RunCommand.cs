using System.CommandLine;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using Modular.Abstractions.Devices;
using Modular.Core.Config;
using Modular.Core.Machine;
using Modular.Core.Migration.Engine;
using Modular.Core.Plugins;
using Modular.Core.Qmp;

namespace Modular.Cli.Commands;

/// <summary>
/// <c>modular run</c>: launches a guest from a config file and/or QEMU-like options, serves QMP, and
/// runs until the guest exits, QMP <c>quit</c>, or Ctrl-C / SIGTERM.
/// </summary>
internal static partial class RunCommand
{
    private static readonly Option<string?> ConfigOption = new("--config") { Description = "The JSON config file (see docs/config.md)." };
    private static readonly Option<string?> KernelOption = new("--kernel") { Description = "A Multiboot v1 kernel to boot (machine.kernel), as QEMU's -kernel." };
    private static readonly Option<string?> MemoryOption = new("--memory") { Description = "Guest RAM size, e.g. 256M or 1G (machine.memory), as QEMU's -m." };
    private static readonly Option<string?> QmpOption = new("--qmp") { Description = "Serve QMP on this unix socket path (qmp.socket)." };
    private static readonly Option<string?> SerialOption = new("--serial") { Description = "Where the first serial port writes: stdio, file:PATH, unix:PATH or null." };
    private static readonly Option<bool> PausedOption = new("--paused", "-S") { Description = "Start with the vCPUs stopped (QEMU's -S); resume with QMP cont." };
    private static readonly Option<string?> IncomingOption = new("--incoming") { Description = "Wait for an incoming migration on this URI (migration.incoming), as QEMU's -incoming." };

    internal static Command Create()
    {
        var command = new Command("run", "Run a virtual machine from a config file and/or QEMU-like options until the guest exits, QMP quit, or Ctrl-C.");
        foreach (Option option in new Option[] { ConfigOption, KernelOption, MemoryOption, QmpOption, SerialOption, PausedOption, IncomingOption, CliApp.SetOption })
        {
            command.Options.Add(option);
        }

        command.SetAction((parse, cancellationToken) => RunAsync(parse, cancellationToken));
        return command;
    }

    /// <summary>The config the options describe: the file (if any), then --set, then the shorthands.</summary>
    internal static ModularConfig LoadConfig(ParseResult parse)
    {
        List<KeyValuePair<string, string>> overrides = CliApp.Overrides(parse.GetValue(CliApp.SetOption));
        void Add(string key, string? value, bool isPath = false)
        {
            if (value is not null)
            {
                overrides.Add(new(key, isPath ? Path.GetFullPath(value) : value));
            }
        }

        Add("machine.kernel", parse.GetValue(KernelOption), isPath: true);
        Add("machine.memory", parse.GetValue(MemoryOption));
        Add("qmp.socket", parse.GetValue(QmpOption), isPath: true);
        Add("migration.incoming", parse.GetValue(IncomingOption));
        if (parse.GetValue(PausedOption))
        {
            Add("machine.paused", "true");
        }

        ModularConfig config = ConfigLoader.Load(parse.GetValue(ConfigOption), overrides);
        string? serial = parse.GetValue(SerialOption);
        if (serial is not null)
        {
            int index = config.Devices.ToList().FindIndex(d => d.Type == "serial");
            if (index < 0)
            {
                throw new ConfigException("--serial: the machine has no serial device; add {\"type\": \"serial\"} to devices.");
            }

            DeviceConfig old = config.Devices[index];
            var properties = new Dictionary<string, string>(old.Properties, StringComparer.Ordinal) { ["output"] = serial };
            var devices = config.Devices.ToList();
            devices[index] = old with { Properties = properties };
            config = config with { Devices = devices };
        }

        return config;
    }

    private static async Task<int> RunAsync(ParseResult parse, CancellationToken cancellationToken)
    {
        using ILoggerFactory loggers = CliApp.CreateLoggerFactory(parse);
        ModularConfig config;
        try
        {
            config = LoadConfig(parse);
        }
        catch (ConfigException ex)
        {
            await Console.Error.WriteLineAsync(ex.Message);
            return ExitCodes.Usage;
        }

        using PluginCatalog plugins = PluginCatalog.Load(CliApp.PluginDirectories(parse, config), loggers.CreateLogger("plugins"));
        MachineStartMode mode = config.Migration.Incoming is null ? MachineStartMode.Boot : MachineStartMode.Incoming;
        VirtualMachine machine;
        try
        {
            machine = VirtualMachine.Create(config, plugins, mode, loggers);
        }
        catch (MachineCreationException ex)
        {
            await Console.Error.WriteLineAsync("modular: " + ex.Message);
            return ex.IsConfigError ? ExitCodes.Usage : ExitCodes.Failure;
        }

        using (machine)
        {
            MigrationController migration;
            try
            {
                migration = new MigrationController(machine, plugins, loggers);
            }
            catch (ConfigException ex)
            {
                // An object of the config (tls-creds-x509) names files that cannot be read.
                await Console.Error.WriteLineAsync("modular: " + ex.Message);
                return ExitCodes.Usage;
            }

            QmpServer? qmp = null;
            try
            {
                if (config.QmpSocket is not null)
                {
                    qmp = QmpServer.Start(config.QmpSocket, logger: loggers.CreateLogger("qmp"));
                    QmpMachineCommands.Register(qmp.Commands, machine);
                    MigrationQmpCommands.Register(qmp.Commands, migration);
                    machine.EventRaised += qmp.EmitEvent;
                    migration.EventRaised += qmp.EmitEvent;
                }
            }
            catch (QmpServerStartException ex)
            {
                await Console.Error.WriteLineAsync("modular: " + ex.Message);
                return ExitCodes.Failure;
            }

            using PosixSignalRegistration sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
            using PosixSignalRegistration sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
            void OnSignal(PosixSignalContext context)
            {
                context.Cancel = true;
                machine.RequestExit(0, "host-signal", guest: false);
            }

            await Console.Error.WriteLineAsync(
                $"modular: {machine.AcceleratorDescription}; {ByteSize.Format(config.Machine.MemoryBytes)} RAM; " +
                (mode == MachineStartMode.Boot ? $"kernel {config.Machine.Kernel ?? "(none)"}" : $"waiting for an incoming migration on {config.Migration.Incoming}") +
                (config.QmpSocket is null ? string.Empty : $"; QMP on {config.QmpSocket}") +
                (config.Machine.Paused ? "; paused (QMP cont starts it)" : string.Empty));

            int exitCode;
            try
            {
                if (mode == MachineStartMode.Incoming)
                {
                    await StartIncomingAsync(machine, migration, config);
                }

                machine.Start();
                if (mode == MachineStartMode.Boot && qmp is not null)
                {
                    migration.PrepareAhead();
                }

                exitCode = await machine.Exited.WaitAsync(cancellationToken);
            }
            catch (MachineCreationException ex)
            {
                await Console.Error.WriteLineAsync("modular: " + ex.Message);
                return ex.IsConfigError ? ExitCodes.Usage : ExitCodes.Failure;
            }
            finally
            {
                // A vCPU may wait for a postcopy page that will not come now (a paused migration):
                // let it go before the machine's threads are joined.
                migration.AbandonForExit();
                if (qmp is not null)
                {
                    await qmp.DisposeAsync();
                }
            }

            if (machine.FatalError is not null)
            {
                await Console.Error.WriteLineAsync("modular: " + machine.FatalError);
            }

            return exitCode;
        }
    }
}
