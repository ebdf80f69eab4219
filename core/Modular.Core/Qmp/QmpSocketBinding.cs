using System.Net.Sockets;
using System.Text;
using Modular.Core.Interop;

namespace Modular.Core.Qmp;

/// <summary>
/// Creates the listening unix socket for QMP: removes a stale socket file, refuses a path that a
/// live server owns or that is not a socket, and gives the new socket file mode 0600 between
/// bind and listen, so that no other user ever gets a chance to connect.
/// </summary>
internal static class QmpSocketBinding
{
    private const int MaxSocketPathBytes = 107; // sizeof(sockaddr_un.sun_path) - 1

    /// <summary>Binds and listens on <paramref name="path"/>; returns the socket and the inode of its file.</summary>
    /// <param name="path">An absolute path.</param>
    /// <param name="inode">The inode of the created socket file, so that disposal removes only its own file.</param>
    /// <exception cref="QmpServerStartException">The path cannot be used; the message says why and what to do.</exception>
    internal static Socket Listen(string path, out ulong inode)
    {
        if (!OperatingSystem.IsLinux())
        {
            throw new PlatformNotSupportedException("The QMP server needs Linux (unix sockets with file modes, statx).");
        }

        if (Encoding.UTF8.GetByteCount(path) > MaxSocketPathBytes)
        {
            throw new QmpServerStartException(path,
                $"The QMP socket path '{path}' is longer than the {MaxSocketPathBytes} bytes a unix socket address can hold; choose a shorter path.");
        }

        RemoveStaleSocket(path);
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            socket.Bind(new UnixDomainSocketEndPoint(path));
            // Before listen() nobody can connect, so setting the mode here leaves no window. (umask
            // is process-wide and would race with other threads creating files.)
            File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite);
            FileStatusInterop.GetKind(path, out inode);
            socket.Listen(16);
            return socket;
        }
        catch (Exception e) when (e is SocketException or IOException or UnauthorizedAccessException)
        {
            socket.Dispose();
            throw new QmpServerStartException(path,
                $"Cannot listen for QMP on '{path}': {e.Message}. Check that the directory exists and is writable.", e);
        }
    }

    /// <summary>Deletes the socket file at <paramref name="path"/> if it is still the one this server created.</summary>
    /// <param name="path">The socket path.</param>
    /// <param name="inode">The inode recorded at bind time.</param>
    internal static void RemoveIfOurs(string path, ulong inode)
    {
        try
        {
            if (FileStatusInterop.GetKind(path, out ulong current) == FileKind.Socket && current == inode)
            {
                File.Delete(path);
            }
        }
        catch (IOException)
        {
            // Best effort: the next server on this path removes a stale file anyway.
        }
    }

    private static void RemoveStaleSocket(string path)
    {
        FileKind kind;
        try
        {
            kind = FileStatusInterop.GetKind(path, out _);
        }
        catch (IOException e)
        {
            throw new QmpServerStartException(path, $"Cannot use '{path}' as the QMP socket: {e.Message}", e);
        }

        if (kind == FileKind.Missing)
        {
            return;
        }

        if (kind != FileKind.Socket)
        {
            throw new QmpServerStartException(path,
                $"'{path}' exists and is not a unix socket; refusing to replace it with the QMP socket. Remove it or choose another path.");
        }

        using (var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            try
            {
                probe.Connect(new UnixDomainSocketEndPoint(path));
                throw new QmpServerStartException(path,
                    $"Another process is already listening on the QMP socket '{path}'; stop it or choose another path.");
            }
            catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionRefused)
            {
                // Nobody listens: a socket file left behind by a process that died.
            }
        }

        try
        {
            File.Delete(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new QmpServerStartException(path,
                $"Cannot remove the stale QMP socket file '{path}': {e.Message}. Remove it by hand or choose another path.", e);
        }
    }
}
