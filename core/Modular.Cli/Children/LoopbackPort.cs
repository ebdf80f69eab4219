using System.Net;
using System.Net.Sockets;

namespace Modular.Cli.Children;

/// <summary>A free loopback tcp port, for a listener that must be named before it binds (QEMU's migrate-incoming and migrate-recover do not report a port 0 bound).</summary>
internal static class LoopbackPort
{
    /// <summary>A port no socket holds now (the kernel's pick for port 0, released at once).</summary>
    internal static int Free()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}
