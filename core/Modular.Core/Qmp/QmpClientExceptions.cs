namespace Modular.Core.Qmp;

/// <summary>The server answered a command with <c>{"error": {"class": ..., "desc": ...}}</c>.</summary>
public sealed class QmpErrorException : Exception
{
    /// <summary>Creates the exception for one failed command.</summary>
    /// <param name="command">The command that failed.</param>
    /// <param name="errorClass">The error's <c>class</c>.</param>
    /// <param name="description">The error's <c>desc</c>.</param>
    public QmpErrorException(string command, string errorClass, string description)
        : base($"QMP command '{command}' failed: {errorClass}: {description}")
    {
        Command = command;
        ErrorClass = errorClass;
        Description = description;
    }

    /// <summary>The command that failed.</summary>
    public string Command { get; }

    /// <summary>The error's <c>class</c> (<c>GenericError</c>, <c>CommandNotFound</c>, ...).</summary>
    public string ErrorClass { get; }

    /// <summary>The error's <c>desc</c>, exactly as the server sent it.</summary>
    public string Description { get; }
}

/// <summary>The QMP connection could not be made, or broke, or the server spoke something that is not QMP.</summary>
public sealed class QmpConnectionException : IOException
{
    /// <summary>Creates the exception.</summary>
    /// <param name="socketPath">The QMP socket path.</param>
    /// <param name="message">The whole sentence a user reads, naming the path.</param>
    /// <param name="innerException">The underlying failure, if any.</param>
    public QmpConnectionException(string socketPath, string message, Exception? innerException = null)
        : base(message, innerException)
    {
        SocketPath = socketPath;
    }

    /// <summary>The QMP socket path.</summary>
    public string SocketPath { get; }
}
