using System.IO.Pipelines;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Modular.Abstractions.Transports;

namespace Modular.Core.Migration.Tls;

/// <summary>
/// Runs one TLS handshake in memory, with a throw-away self-signed certificate, and moves some bytes
/// both ways through the same wrappers a migration uses, once per process: when the first TLS
/// credentials are added (config or object-add), or after the migration warm-up
/// (<see cref="Engine.SwitchWarmUp"/>), whichever comes first. The first handshake in a process loads OpenSSL and
/// compiles SslStream's and X509Chain's code (the product runs without tiered compilation): measured
/// 240 ms for the first and 3 ms for the next; without this the first migration's setup paid it.
/// </summary>
internal static class TlsWarmUp
{
    private static int _started;

    /// <summary>Completes when the warm-up has run (at once if it never started).</summary>
    internal static Task Completion { get; private set; } = Task.CompletedTask;

    /// <summary>Starts it on the thread pool, once per process; returns at once.</summary>
    internal static void Start()
    {
        if (Interlocked.Exchange(ref _started, 1) == 0)
        {
            Completion = Task.Run(RunAsync);
        }
    }

    private static async Task RunAsync()
    {
        try
        {
            _ = await ExerciseAsync().ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is CryptographicException or IOException or AuthenticationException or TransportException or InvalidOperationException)
        {
            // Only a warm-up: a real handshake reports its own errors.
        }
    }

    /// <summary>The handshake and the bytes; returns how many bytes the server end read (65536).</summary>
    internal static async Task<long> ExerciseAsync()
    {
        using X509Certificate2 certificate = SelfSigned();
        TlsSession server = TlsSession.ForWarmUp(TlsCredentials.Ephemeral(TlsEndpoint.Server, certificate), hostname: null);
        TlsSession client = TlsSession.ForWarmUp(TlsCredentials.Ephemeral(TlsEndpoint.Client, certificate), hostname: "localhost");
        var forward = new Pipe();
        var back = new Pipe();
        var serverEnd = new DuplexPipe(forward.Reader, back.Writer);
        var clientEnd = new DuplexPipe(back.Reader, forward.Writer);
        Task<System.Net.Security.SslStream> accepting = server.HandshakeAsync(serverEnd, "warm-up", CancellationToken.None).AsTask();
        await using System.Net.Security.SslStream clientSsl = await client.HandshakeAsync(clientEnd, "warm-up", CancellationToken.None).ConfigureAwait(false);
        await using System.Net.Security.SslStream serverSsl = await accepting.ConfigureAwait(false);
        var source = new TlsMigrationConnection.TlsPipe(clientSsl, clientEnd);
        var destination = new TlsMigrationConnection.TlsPipe(serverSsl, serverEnd);

        byte[] page = new byte[64 * 1024];
        Task<long> received = DrainAsync(destination.Input);
        await source.Output.WriteAsync(page).ConfigureAwait(false);
        await source.Output.CompleteAsync().ConfigureAwait(false);
        long forwarded = await received.ConfigureAwait(false);
        await destination.Output.WriteAsync(page.AsMemory(0, 16)).ConfigureAwait(false);
        await destination.Output.FlushAsync().ConfigureAwait(false);
        ReadResult reply = await source.Input.ReadAsync().ConfigureAwait(false);
        source.Input.AdvanceTo(reply.Buffer.End);
        return forwarded;
    }

    private static async Task<long> DrainAsync(PipeReader reader)
    {
        long total = 0;
        while (true)
        {
            ReadResult result = await reader.ReadAsync().ConfigureAwait(false);
            total += result.Buffer.Length;
            reader.AdvanceTo(result.Buffer.End);
            if (result.IsCompleted)
            {
                return total;
            }
        }
    }

    private static X509Certificate2 SelfSigned()
    {
        using ECDsa key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=localhost", key, HashAlgorithmName.SHA256);
        var names = new SubjectAlternativeNameBuilder();
        names.AddDnsName("localhost");
        request.CertificateExtensions.Add(names.Build());
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        using X509Certificate2 made = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-5), DateTimeOffset.UtcNow.AddHours(1));
        return X509CertificateLoader.LoadPkcs12(made.Export(X509ContentType.Pkcs12), password: null);
    }

    private sealed class DuplexPipe(PipeReader input, PipeWriter output) : IDuplexPipe
    {
        public PipeReader Input => input;

        public PipeWriter Output => output;
    }
}
