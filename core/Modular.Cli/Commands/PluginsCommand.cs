using System.CommandLine;
using Microsoft.Extensions.Logging;
using Modular.Core.Config;
using Modular.Core.Plugins;
using Spectre.Console;

namespace Modular.Cli.Commands;

/// <summary><c>modular plugins</c>: what was found, and whether each part is usable on this host.</summary>
internal static class PluginsCommand
{
    internal static Command Create()
    {
        var configOption = new Option<string?>("--config") { Description = "A config file whose plugins.directories are searched too." };
        var command = new Command("plugins", "List the plugins found: name, kind, version, file, and whether each is usable on this host (and if not, why).");
        command.Options.Add(configOption);
        command.SetAction(parse =>
        {
            using ILoggerFactory loggers = CliApp.CreateLoggerFactory(parse);
            ModularConfig? config = null;
            string? configPath = parse.GetValue(configOption);
            if (configPath is not null)
            {
                try
                {
                    config = ConfigLoader.Load(configPath);
                }
                catch (ConfigException ex)
                {
                    Console.Error.WriteLine(ex.Message);
                    return ExitCodes.Usage;
                }
            }

            using PluginCatalog catalog = PluginCatalog.Load(CliApp.PluginDirectories(parse, config), loggers.CreateLogger("plugins"));
            Print(catalog);
            return ExitCodes.Success;
        });
        return command;
    }

    private static void Print(PluginCatalog catalog)
    {
        IAnsiConsole console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(Console.Out),
        });
        if (Console.IsOutputRedirected)
        {
            console.Profile.Width = 240;
        }

        var table = new Table().AddColumns("Plugin", "Kind", "Name", "Version", "Usable", "File");
        IReadOnlyList<PluginPartInfo> parts = catalog.Describe();
        foreach (PluginPartInfo part in parts)
        {
            string usable = part.IsUsable ? "yes" : "no: " + part.Reason;
            table.AddRow(
                Markup.Escape(part.Plugin),
                Markup.Escape(part.Kind.ToString().ToLowerInvariant()),
                Markup.Escape(part.Name),
                Markup.Escape(part.Version),
                Markup.Escape(usable),
                Markup.Escape(part.AssemblyPath));
        }

        console.Write(table);
        console.WriteLine($"{parts.Count} parts, {parts.Count(p => p.IsUsable)} usable here.");
        foreach (PluginLoadProblem problem in catalog.Problems)
        {
            console.WriteLine("problem: " + problem.Message);
        }
    }
}
