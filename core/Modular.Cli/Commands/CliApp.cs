using System.CommandLine;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Console;
using Modular.Core.Config;
using Modular.Core.Plugins;

namespace Modular.Cli.Commands;

/// <summary>Builds the command tree and the options every command shares.</summary>
internal static class CliApp
{
    internal static readonly Option<LogLevel> LogLevelOption = new("--log-level")
    {
        Description = "Logging threshold: Trace, Debug, Information, Warning, Error, Critical or None.",
        DefaultValueFactory = _ => LogLevel.Warning,
        Recursive = true,
    };

    internal static readonly Option<string[]> PluginsOption = new("--plugins")
    {
        Description = "An extra directory of plugin folders (repeatable); searched after plugins/ beside the executable.",
        Recursive = true,
        Arity = ArgumentArity.ZeroOrMore,
        AllowMultipleArgumentsPerToken = false,
    };

    internal static readonly Option<string[]> SetOption = new("--set")
    {
        Description = "Override one config key, as PATH=VALUE (e.g. machine.memory=1G, devices[0].output=file:/tmp/s.log); repeatable.",
        Arity = ArgumentArity.ZeroOrMore,
        AllowMultipleArgumentsPerToken = false,
    };

    internal static RootCommand BuildRootCommand()
    {
        var root = new RootCommand("Modular: a minimal VMM with plugin transports, devices and fault backends, and live migration (precopy and postcopy).");
        root.Options.Add(LogLevelOption);
        root.Options.Add(PluginsOption);
        root.Subcommands.Add(PluginsCommand.Create());
        root.Subcommands.Add(ConfigCommand.Create());
        root.Subcommands.Add(RunCommand.Create());
        root.Subcommands.Add(MigrateCommand.Create());
        root.Subcommands.Add(MigrateRecoverCommand.Create());
        root.Subcommands.Add(DemoCommand.Create());
        root.Subcommands.Add(BenchCommand.Create());
        root.Subcommands.Add(TlsCredsCommand.Create());
        return root;
    }

    internal static ILoggerFactory CreateLoggerFactory(ParseResult parse) =>
        LoggerFactory.Create(builder => builder
            .SetMinimumLevel(parse.GetValue(LogLevelOption))
            .AddConsole(o => o.LogToStandardErrorThreshold = LogLevel.Trace)
            .AddSimpleConsole(o => { o.SingleLine = true; o.TimestampFormat = "HH:mm:ss.fff "; }));

    /// <summary>The plugin directories: plugins/ beside the executable, the config's, then --plugins.</summary>
    internal static List<string> PluginDirectories(ParseResult parse, ModularConfig? config)
    {
        var directories = new List<string> { PluginCatalog.DefaultDirectory };
        if (config is not null)
        {
            directories.AddRange(config.PluginDirectories);
        }

        directories.AddRange((parse.GetValue(PluginsOption) ?? []).Select(Path.GetFullPath));
        return directories;
    }

    /// <summary>Parses repeated --set PATH=VALUE options.</summary>
    /// <exception cref="ConfigException">An override has no '='.</exception>
    internal static List<KeyValuePair<string, string>> Overrides(IEnumerable<string>? sets)
    {
        var list = new List<KeyValuePair<string, string>>();
        foreach (string set in sets ?? [])
        {
            int eq = set.IndexOf('=', StringComparison.Ordinal);
            if (eq <= 0)
            {
                throw new ConfigException($"--set '{set}': expected PATH=VALUE, for example machine.memory=1G.");
            }

            list.Add(new(set[..eq].Trim(), set[(eq + 1)..]));
        }

        return list;
    }
}
