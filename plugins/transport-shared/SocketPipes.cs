using System.IO.Pipelines;
using System.Net.Sockets;
using Pipelines.Sockets.Unofficial;

namespace Modular.Transports.Shared;

/// <summary>A duplex pipe over one connected socket, as <see cref="SocketMigrationConnection"/> uses it.</summary>
internal interface ISocketPipe : IDuplexPipe
{
    /// <summary>The underlying socket (to reset it on abort).</summary>
    Socket Socket { get; }

    /// <summary>The socket error that ended the pipe, or Success for an orderly end (or none yet).</summary>
    SocketError Error { get; }

    /// <summary>Completes both directions and closes the socket. Never throws.</summary>
    void Close();
}

/// <summary>Pipelines.Sockets.Unofficial's <see cref="SocketConnection"/> as an <see cref="ISocketPipe"/>.</summary>
internal sealed class PipelinesSocketPipe(SocketConnection connection) : ISocketPipe
{
    public PipeReader Input => connection.Input;

    public PipeWriter Output => connection.Output;

    public Socket Socket => connection.Socket;

    // Pipelines.Sockets completes the input without an error when the peer resets the connection;
    // only the recorded socket error tells a reset (the peer aborted) from an orderly close.
    public SocketError Error => connection.SocketError;

    // With inline pipe schedulers, completing a pipe runs the socket's send or receive loop on this
    // thread, which may then fail on a connection the peer already reset: closing never throws.
    public void Close()
    {
        try
        {
            connection.Output.Complete();
            connection.Input.Complete();
        }
        catch (Exception)
        {
            // Whatever the loop failed with (a reset, a closed socket), the connection is going away
            // anyway; the error already reached the reader or writer that was using it.
        }

        try
        {
            connection.Dispose();
        }
        catch (Exception)
        {
            // As above.
        }
    }
}
