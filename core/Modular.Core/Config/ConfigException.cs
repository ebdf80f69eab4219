namespace Modular.Core.Config;

/// <summary>
/// A config file or override is wrong. <see cref="Errors"/> holds one line per problem, each naming
/// the JSON path (or line and column for malformed JSON) and what was expected.
/// </summary>
public sealed class ConfigException : Exception
{
    /// <summary>Creates the exception.</summary>
    public ConfigException() : this("The configuration is invalid.", []) { }

    /// <summary>Creates the exception with a message.</summary>
    /// <param name="message">The summary.</param>
    public ConfigException(string message) : this(message, [message]) { }

    /// <summary>Creates the exception with a message and cause.</summary>
    /// <param name="message">The summary.</param>
    /// <param name="innerException">The cause.</param>
    public ConfigException(string message, Exception innerException) : base(message, innerException) => Errors = [message];

    /// <summary>Creates the exception for several problems in <paramref name="source"/>.</summary>
    /// <param name="source">The config file (or "command line").</param>
    /// <param name="errors">One line per problem.</param>
    public ConfigException(string source, IReadOnlyList<string> errors)
        : base(errors.Count == 1 ? $"{source}: {errors[0]}" : $"{source}: {errors.Count} problems:{Environment.NewLine}  " + string.Join(Environment.NewLine + "  ", errors))
    {
        Errors = errors;
    }

    /// <summary>One line per problem.</summary>
    public IReadOnlyList<string> Errors { get; }
}
