using System.IO.Pipelines;
using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using Modular.Abstractions.Transports;

namespace Modular.Core.Migration.Tls;

/// <summary>
/// One end's TLS settings for a migration: the credentials, and on the source the name the
/// destination's certificate must hold. It runs the handshake on each channel of the migration
/// (the main connection first, then every extra channel), as QEMU wraps each of its migration
/// channels in TLS.
/// </summary>
public sealed class TlsSession
{
    /// <summary>How long a TLS handshake may take before the channel is given up.</summary>
    internal static readonly TimeSpan HandshakeTimeout = TimeSpan.FromSeconds(10);

    /// <summary>A session for the warm-up's in-memory handshake.</summary>
    internal static TlsSession ForWarmUp(TlsCredentials credentials, string? hostname) => new(credentials, hostname);

    private TlsSession(TlsCredentials credentials, string? hostname, TlsAuthorization? authorization = null)
    {
        Credentials = credentials;
        Hostname = hostname;
        Authorization = authorization;
    }

    /// <summary>On the destination: the tls-authz object the source's certificate must pass, or null.</summary>
    public TlsAuthorization? Authorization { get; }

    /// <summary>The credentials.</summary>
    public TlsCredentials Credentials { get; }

    /// <summary>On the source: the name checked against the destination's certificate; null on the destination.</summary>
    public string? Hostname { get; }

    /// <summary>True on the source (the TLS client).</summary>
    public bool IsClient => Hostname is not null;

    /// <summary>
    /// The TLS settings of a migration, from its tls-creds and tls-hostname parameters: null when
    /// tls-creds is empty (plain channels).
    /// </summary>
    /// <param name="registry">The machine's credentials objects.</param>
    /// <param name="tlsCreds">The tls-creds parameter.</param>
    /// <param name="tlsHostname">The tls-hostname parameter (source only; empty for the host of a tcp URI).</param>
    /// <param name="endpoint">The migration URI.</param>
    /// <param name="outgoing">True on the source.</param>
    /// <param name="tlsAuthz">The tls-authz parameter (destination only; empty for none).</param>
    /// <exception cref="ArgumentException">No such credentials or authorization, credentials for the other end, a transport TLS cannot run on, or no hostname (QEMU's messages where it has them).</exception>
    public static TlsSession? For(TlsCredentialsRegistry registry, string tlsCreds, string tlsHostname, TransportEndpoint endpoint, bool outgoing, string tlsAuthz = "")
    {
        ArgumentNullException.ThrowIfNull(registry);
        ArgumentNullException.ThrowIfNull(endpoint);
        if (string.IsNullOrEmpty(tlsCreds))
        {
            return null;
        }

        if (endpoint.Scheme is "file" or "rdma")
        {
            throw new ArgumentException($"TLS cannot run over {endpoint.Scheme}: (tls-creds is '{tlsCreds}'): {(endpoint.Scheme == "file" ? "a file has no peer to hold a TLS handshake with" : "RDMA moves pages without a byte stream to encrypt")}. Set tls-creds to \"\" for this migration, or migrate over tcp or unix.");
        }

        TlsCredentials credentials = registry.Resolve(tlsCreds, outgoing ? TlsEndpoint.Client : TlsEndpoint.Server);
        if (!outgoing)
        {
            if (string.IsNullOrEmpty(tlsAuthz))
            {
                return new TlsSession(credentials, hostname: null);
            }

            TlsAuthorization authorization = registry.ResolveAuthorization(tlsAuthz);
            if (!credentials.VerifyPeer)
            {
                throw new ArgumentException($"tls-authz '{tlsAuthz}' checks the source's certificate, but the credentials '{tlsCreds}' have verify-peer=false and do not ask for one; set verify-peer to true or tls-authz to \"\".");
            }

            return new TlsSession(credentials, hostname: null, authorization);
        }

        string? hostname = !string.IsNullOrEmpty(tlsHostname) ? tlsHostname : endpoint.Scheme == "tcp" ? TcpHost(endpoint.Address) : null;
        if (string.IsNullOrEmpty(hostname))
        {
            throw new ArgumentException($"No hostname available for TLS: {endpoint} names no host; set the tls-hostname parameter to a name in the destination's certificate.");
        }

        return new TlsSession(credentials, hostname);
    }

    /// <summary>
    /// The exception that says what went wrong: SslStream wraps a failing channel's error in an
    /// IOException that says only "see inner exception"; the transport's own error (which names
    /// the connection) is inside it. Anything else is returned as it is.
    /// </summary>
    /// <param name="error">What a migration caught.</param>
    public static Exception Unwrap(Exception error)
    {
        ArgumentNullException.ThrowIfNull(error);
        Exception current = error;
        while (current is IOException { InnerException: { } inner } && current is not TransportException
            && current.Message.Contains("see inner exception", StringComparison.OrdinalIgnoreCase))
        {
            current = inner;
        }

        return current;
    }

    /// <summary>The host of a tcp address <c>HOST:PORT</c> or <c>[V6]:PORT</c>.</summary>
    private static string TcpHost(string address)
    {
        int colon = address.LastIndexOf(':');
        string host = colon > 0 ? address[..colon] : address;
        return host.StartsWith('[') && host.EndsWith(']') ? host[1..^1] : host;
    }

    /// <summary>Runs the handshake on a migration's main connection; the result carries the stream and opens its channels with TLS too.</summary>
    /// <param name="inner">The transport's connection; the result owns it.</param>
    /// <param name="cancellationToken">The migration's cancellation.</param>
    /// <exception cref="TransportException">The handshake failed or timed out; the message says why and what to check. The connection is disposed.</exception>
    public async ValueTask<IMigrationConnection> WrapAsync(IMigrationConnection inner, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(inner);
        SslStream ssl;
        try
        {
            ssl = await HandshakeAsync(inner.Transport, inner.RemoteDescription, cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            await inner.DisposeAsync().ConfigureAwait(false);
            throw;
        }

        return TlsMigrationConnection.Create(this, inner, ssl);
    }

    /// <summary>Runs the handshake on one channel's pipe.</summary>
    /// <exception cref="TransportException">It failed or timed out.</exception>
    internal async ValueTask<SslStream> HandshakeAsync(IDuplexPipe pipe, string description, CancellationToken cancellationToken)
    {
        string? problem = null;
        var stream = new PipeDuplexStream(pipe);
        var ssl = new SslStream(stream, leaveInnerStreamOpen: false);
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(HandshakeTimeout);
        try
        {
            if (IsClient)
            {
                var options = new SslClientAuthenticationOptions
                {
                    TargetHost = Hostname,
                    CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
                    RemoteCertificateValidationCallback = (_, certificate, _, errors) => (problem = CheckServer(certificate, errors)) is null,
                };
                if (Credentials.Certificate is { } own)
                {
                    options.ClientCertificates = [own];
                    options.LocalCertificateSelectionCallback = (_, _, _, _, _) => own;
                }

                await ssl.AuthenticateAsClientAsync(options, timeout.Token).ConfigureAwait(false);
            }
            else
            {
                var options = new SslServerAuthenticationOptions
                {
                    ServerCertificateContext = Credentials.ServerContext,
                    ClientCertificateRequired = Credentials.VerifyPeer,
                    CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
                    RemoteCertificateValidationCallback = (_, certificate, _, _) => (problem = CheckClient(certificate)) is null,
                };
                await ssl.AuthenticateAsServerAsync(options, timeout.Token).ConfigureAwait(false);
            }

            stream.CoalesceWrites = true;
            return ssl;
        }
        catch (Exception ex) when (ex is AuthenticationException or IOException or OperationCanceledException or TransportException)
        {
            await ssl.DisposeAsync().ConfigureAwait(false);
            if (ex is OperationCanceledException && cancellationToken.IsCancellationRequested)
            {
                throw;
            }

            string peer = IsClient ? "destination" : "source";
            string reason = problem is not null
                ? $"the {peer} was refused: {problem}"
                : ex is OperationCanceledException
                    ? $"the {peer} did not complete it within {HandshakeTimeout.TotalSeconds:F0} s"
                    : ex.Message;
            string advice = IsClient
                ? "Check that the destination has tls-creds set (credentials with endpoint=server) before the migration starts"
                : "Check that the source has tls-creds set (credentials with endpoint=client) before it migrates";
            throw new TransportException($"TLS handshake with {description} failed ({(IsClient ? "as client" : "as server")}, credentials '{Credentials.Id}'): {reason}. {advice}, and that both sides' certificates come from the same CA.", ex);
        }
    }

    private string? CheckServer(X509Certificate? certificate, SslPolicyErrors errors)
    {
        if (!Credentials.VerifyPeer)
        {
            return null;
        }

        if (certificate is null)
        {
            return "it presented no certificate";
        }

        using var peer = new X509Certificate2(certificate);
        if (Credentials.CheckChain(peer) is { } chainProblem)
        {
            return chainProblem;
        }

        if (errors.HasFlag(SslPolicyErrors.RemoteCertificateNameMismatch))
        {
            return $"its certificate ({peer.Subject}) is not for '{Hostname}'; set tls-hostname to a name the certificate holds, or migrate to one";
        }

        return null;
    }

    private string? CheckClient(X509Certificate? certificate)
    {
        if (!Credentials.VerifyPeer)
        {
            return null;
        }

        if (certificate is null)
        {
            return "it presented no certificate; give the source's credentials directory client-cert.pem and client-key.pem signed by this CA, or set verify-peer=false on the destination's credentials";
        }

        using var peer = new X509Certificate2(certificate);
        if (Credentials.CheckChain(peer) is { } chainProblem)
        {
            return chainProblem;
        }

        if (Authorization is { } authorization)
        {
            string identity = TlsAuthorization.Identity(peer.SubjectName);
            if (!authorization.IsAllowed(identity, out string why))
            {
                // QEMU's words, then which rule decided.
                return $"TLS x509 authz check for {identity} is denied ({why})";
            }
        }

        return null;
    }
}
