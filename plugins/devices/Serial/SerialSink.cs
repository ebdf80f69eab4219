using System.Net.Sockets;
using Modular.Abstractions.Devices;

namespace Modular.Devices.Serial;

/// <summary>
/// Where a serial port's output goes, from the <c>output</c> config key:
/// <list type="bullet">
/// <item><c>stdio</c> (default): the VMM's standard output.</item>
/// <item><c>file:PATH</c>: a file, created or truncated (as QEMU's <c>-serial file:</c>).</item>
/// <item><c>unix:PATH</c>: Modular connects as a client to a unix stream socket that is already
/// listening at PATH (start e.g. <c>socat UNIX-LISTEN:PATH -</c> first). Connecting keeps the VMM from
/// waiting for a viewer at startup, and a viewer that goes away costs output, never the guest.</item>
/// <item><c>null</c>: discarded (the in-memory tail still keeps it).</item>
/// </list>
/// </summary>
internal sealed class SerialSink : IDisposable
{
    private SerialSink(Stream? stream, bool ownsStream, string description)
    {
        Stream = stream;
        _ownsStream = ownsStream;
        Description = description;
    }

    private readonly bool _ownsStream;

    /// <summary>The stream written to, or null for <c>null</c>.</summary>
    public Stream? Stream { get; }

    /// <summary>The output as written in the config (for messages).</summary>
    public string Description { get; }

    /// <summary>Opens the sink named by <paramref name="output"/>.</summary>
    /// <exception cref="DeviceConfigException">The value is malformed or the file/socket cannot be opened.</exception>
    public static SerialSink Open(string output, DeviceConfig config, string key)
    {
        string where = $"{config.Path}.{key}";
        if (output == "stdio")
        {
            return new SerialSink(Console.OpenStandardOutput(), ownsStream: false, output);
        }

        if (output == "null")
        {
            return new SerialSink(null, ownsStream: false, output);
        }

        if (output.StartsWith("file:", StringComparison.Ordinal))
        {
            string path = RequirePath(output, "file:", where);
            try
            {
                return new SerialSink(new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.Read), ownsStream: true, output);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new DeviceConfigException($"{where}: cannot create the serial output file '{path}': {e.Message}", e);
            }
        }

        if (output.StartsWith("unix:", StringComparison.Ordinal))
        {
            string path = RequirePath(output, "unix:", where);
            var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                socket.Connect(new UnixDomainSocketEndPoint(path));
                return new SerialSink(new NetworkStream(socket, ownsSocket: true), ownsStream: true, output);
            }
            catch (SocketException e)
            {
                socket.Dispose();
                throw new DeviceConfigException(
                    $"{where}: cannot connect to the unix socket '{path}': {e.Message}. The serial port connects as a client: start a listener at that path first.", e);
            }
        }

        throw new DeviceConfigException(
            $"{where}: '{output}' is not a serial output; expected stdio, null, file:PATH or unix:PATH.");
    }

    private static string RequirePath(string output, string prefix, string where)
    {
        string path = output[prefix.Length..];
        return path.Length > 0 ? path : throw new DeviceConfigException($"{where}: '{output}' names no path; write {prefix}PATH.");
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (_ownsStream)
        {
            Stream?.Dispose();
        }
    }
}
