using System.CommandLine;
using Modular.Core.Config;

namespace Modular.Cli.Commands;

/// <summary><c>modular config check FILE</c>: validates a config file and prints what it means.</summary>
internal static class ConfigCommand
{
    internal static Command Create()
    {
        var fileArgument = new Argument<string>("FILE") { Description = "The JSON config file to check." };
        var check = new Command("check", "Validate a config file (and --set overrides); print every problem with its JSON path, or a summary when it is valid.");
        check.Arguments.Add(fileArgument);
        check.Options.Add(CliApp.SetOption);
        check.SetAction(parse =>
        {
            try
            {
                ModularConfig config = ConfigLoader.Load(parse.GetValue(fileArgument), CliApp.Overrides(parse.GetValue(CliApp.SetOption)));
                Console.WriteLine($"{config.Source}: valid.");
                Console.WriteLine($"  machine: {config.Machine.Accelerator}, {ByteSize.Format(config.Machine.MemoryBytes)} RAM, {config.Machine.Vcpus} vCPU(s), kernel {config.Machine.Kernel ?? "(none)"}");
                Console.WriteLine($"  devices: {string.Join(", ", config.Devices.Select(d => $"{d.Id} ({d.Type})"))}");
                Console.WriteLine($"  migration: capabilities on: {string.Join(", ", config.Migration.Capabilities.Where(c => c.Value).Select(c => c.Key).DefaultIfEmpty("none"))}; downtime-limit {config.Migration.DowntimeLimitMs} ms; tls-creds {(config.Migration.TlsCreds.Length > 0 ? config.Migration.TlsCreds : "(none)")}");
                Console.WriteLine($"  objects: {string.Join(", ", config.Migration.TlsObjects.Select(o => $"{o.Id} (tls-creds-x509, endpoint {(o.Endpoint == Core.Migration.Tls.TlsEndpoint.Server ? "server" : "client")}, dir {o.Dir})").Concat(config.Migration.AuthzObjects.Select(a => $"{a.Id} ({a.Type}, {(a.Type == Core.Migration.Tls.TlsAuthorization.SimpleType ? "identity" : "file")} {a.Value})")).DefaultIfEmpty("none"))}{(config.Migration.TlsAuthz.Length > 0 ? "; tls-authz " + config.Migration.TlsAuthz : string.Empty)}");
                Console.WriteLine($"  qmp: {config.QmpSocket ?? "(none)"}");
                return ExitCodes.Success;
            }
            catch (ConfigException ex)
            {
                Console.Error.WriteLine(ex.Message);
                return ExitCodes.Usage;
            }
        });

        var keys = new Command("keys", "Print every config key with its default and meaning, as a Markdown table (docs/config.md holds it).");
        keys.SetAction(_ =>
        {
            Console.Write(KeysTable());
            return ExitCodes.Success;
        });

        var command = new Command("config", "Work with config files.");
        command.Subcommands.Add(check);
        command.Subcommands.Add(keys);
        return command;
    }

    internal static string KeysTable()
    {
        var sb = new System.Text.StringBuilder();
        sb.AppendLine("| key | default | meaning |");
        sb.AppendLine("| --- | --- | --- |");
        foreach (ConfigKey key in ConfigSchema.Keys.Where(k => k.Kind != ConfigValueKind.Section))
        {
            string choices = key.Choices is null ? string.Empty : " One of: " + string.Join(", ", key.Choices) + ".";
            sb.AppendLine($"| `{key.Path}` | {Escape(key.Default)} | {Escape(key.Description)}{choices} |");
        }

        return sb.ToString();
    }

    private static string Escape(string text) => text.Replace("|", "\\|", StringComparison.Ordinal);
}
