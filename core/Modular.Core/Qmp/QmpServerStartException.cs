namespace Modular.Core.Qmp;

/// <summary>The QMP server could not listen on its unix socket path; the message names the path and what to do.</summary>
public sealed class QmpServerStartException : Exception
{
    /// <summary>Creates the error.</summary>
    /// <param name="socketPath">The socket path the server was asked to listen on.</param>
    /// <param name="message">The whole sentence a user reads.</param>
    /// <param name="innerException">The underlying failure, if any.</param>
    public QmpServerStartException(string socketPath, string message, Exception? innerException = null)
        : base(message, innerException)
    {
        SocketPath = socketPath;
    }

    /// <summary>The socket path the server was asked to listen on.</summary>
    public string SocketPath { get; }
}
