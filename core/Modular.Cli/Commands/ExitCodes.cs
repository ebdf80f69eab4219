namespace Modular.Cli.Commands;

/// <summary>The process exit codes of every command.</summary>
internal static class ExitCodes
{
    /// <summary>The command did what was asked.</summary>
    internal const int Success = 0;

    /// <summary>Something failed while running (a migration, a guest, a plugin at run time).</summary>
    internal const int Failure = 1;

    /// <summary>The command line or the config is wrong; nothing was started.</summary>
    internal const int Usage = 2;
}
