using System.CommandLine;
using Modular.Cli.Commands;

namespace Modular.Cli;

/// <summary>The <c>modular</c> executable. Exit codes: 0 success, 1 runtime failure, 2 usage or config error.</summary>
internal static class Program
{
    private static int Main(string[] args)
    {
        RootCommand root = CliApp.BuildRootCommand();
        ParseResult parse = root.Parse(args);
        if (parse.Errors.Count > 0)
        {
            foreach (System.CommandLine.Parsing.ParseError error in parse.Errors)
            {
                Console.Error.WriteLine("modular: " + error.Message);
            }

            Console.Error.WriteLine("Run 'modular --help' (or 'modular COMMAND --help') for usage.");
            return ExitCodes.Usage;
        }

        return parse.Invoke();
    }
}
