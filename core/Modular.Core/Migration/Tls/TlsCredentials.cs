using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Modular.Core.Migration.Tls;

/// <summary>Which end of a TLS session a set of credentials serves (QEMU's tls-creds endpoint property).</summary>
public enum TlsEndpoint
{
    /// <summary>The connecting end: the migration source.</summary>
    Client,

    /// <summary>The listening end: the migration destination.</summary>
    Server,
}

/// <summary>
/// x509 credentials for migration TLS, as QEMU's <c>tls-creds-x509</c> object: a directory with
/// QEMU's file names (<c>ca-cert.pem</c>, <c>server-cert.pem</c> and <c>server-key.pem</c> for a
/// server, <c>client-cert.pem</c> and <c>client-key.pem</c> for a client), an endpoint, and
/// verify-peer. The files are read once, when the credentials are made (as QEMU reads them at
/// object-add), so a bad file is reported then and not in the middle of a migration.
/// </summary>
public sealed class TlsCredentials
{
    /// <summary>QEMU's QOM type name for these credentials.</summary>
    public const string QomType = "tls-creds-x509";

    /// <summary>The CA file every endpoint needs: the certificates that sign the peer's.</summary>
    public const string CaCertFile = "ca-cert.pem";

    private TlsCredentials(string id, string directory, TlsEndpoint endpoint, bool verifyPeer, X509Certificate2Collection authorities, X509Certificate2? certificate)
    {
        Id = id;
        Directory = directory;
        Endpoint = endpoint;
        VerifyPeer = verifyPeer;
        Authorities = authorities;
        Certificate = certificate;
        // Made once, here: the first one in a process took about 115 ms (measured), which a
        // destination would otherwise spend inside the migration's setup, per channel.
        ServerContext = endpoint == TlsEndpoint.Server && certificate is not null
            ? System.Net.Security.SslStreamCertificateContext.Create(certificate, additionalCertificates: null, offline: true)
            : null;
    }

    /// <summary>In memory, for the TLS warm-up (<see cref="TlsWarmUp"/>): a self-signed certificate that is its own CA.</summary>
    internal static TlsCredentials Ephemeral(TlsEndpoint endpoint, X509Certificate2 selfSigned) =>
        new("warm-up", Path.GetTempPath(), endpoint, verifyPeer: true, [selfSigned], endpoint == TlsEndpoint.Server || selfSigned.HasPrivateKey ? selfSigned : null);

    /// <summary>The server's certificate context for SslStream, made once; null on a client.</summary>
    internal System.Net.Security.SslStreamCertificateContext? ServerContext { get; }

    /// <summary>The object id that the tls-creds parameter names.</summary>
    public string Id { get; }

    /// <summary>The directory the files came from (absolute).</summary>
    public string Directory { get; }

    /// <summary>Client (source) or server (destination).</summary>
    public TlsEndpoint Endpoint { get; }

    /// <summary>Whether the peer's certificate is checked against <see cref="Authorities"/> (QEMU's default: yes).</summary>
    public bool VerifyPeer { get; }

    /// <summary>The certificates of ca-cert.pem.</summary>
    public X509Certificate2Collection Authorities { get; }

    /// <summary>This end's certificate with its private key; null for a client without one.</summary>
    public X509Certificate2? Certificate { get; }

    /// <summary>The endpoint's name as QEMU spells it: client or server.</summary>
    public string EndpointName => Endpoint == TlsEndpoint.Server ? "server" : "client";

    /// <summary>Reads the credentials' files.</summary>
    /// <param name="id">The object id.</param>
    /// <param name="directory">The directory with QEMU's file names; relative to the working directory unless absolute.</param>
    /// <param name="endpoint">Client or server.</param>
    /// <param name="verifyPeer">Check the peer's certificate (a server then asks the client for one).</param>
    /// <param name="sanityCheck">QEMU's sanity-check: refuse certificates (this end's and the CA's) that have expired or are not yet valid, now rather than at the first handshake.</param>
    /// <exception cref="ArgumentException">A file is missing or unreadable, or holds no certificate or key, or (with <paramref name="sanityCheck"/>) a certificate is outside its validity; the message names the file and says what the directory must hold.</exception>
    public static TlsCredentials Load(string id, string directory, TlsEndpoint endpoint, bool verifyPeer = true, bool sanityCheck = true)
    {
        ArgumentException.ThrowIfNullOrEmpty(id);
        ArgumentException.ThrowIfNullOrEmpty(directory);
        string dir = Path.GetFullPath(directory);
        string role = endpoint == TlsEndpoint.Server ? "server" : "client";
        string layout = endpoint == TlsEndpoint.Server
            ? $"a server endpoint needs {CaCertFile}, server-cert.pem and server-key.pem in its dir"
            : $"a client endpoint needs {CaCertFile} in its dir, and client-cert.pem with client-key.pem when the destination verifies its peer";
        if (!System.IO.Directory.Exists(dir))
        {
            throw new ArgumentException($"TLS credentials '{id}': the directory {dir} does not exist; {layout} (QEMU's layout).");
        }

        string caPath = Path.Combine(dir, CaCertFile);
        if (!File.Exists(caPath))
        {
            throw new ArgumentException($"TLS credentials '{id}': {caPath} does not exist; {layout} (QEMU's layout).");
        }

        var authorities = new X509Certificate2Collection();
        try
        {
            authorities.ImportFromPemFile(caPath);
        }
        catch (Exception ex) when (ex is CryptographicException or IOException or UnauthorizedAccessException)
        {
            throw new ArgumentException($"TLS credentials '{id}': {caPath} could not be read as PEM certificates: {ex.Message}", ex);
        }

        if (authorities.Count == 0)
        {
            throw new ArgumentException($"TLS credentials '{id}': {caPath} holds no certificate (expected one or more '-----BEGIN CERTIFICATE-----' blocks).");
        }

        string certPath = Path.Combine(dir, role + "-cert.pem");
        string keyPath = Path.Combine(dir, role + "-key.pem");
        X509Certificate2? certificate = null;
        bool haveCert = File.Exists(certPath);
        bool haveKey = File.Exists(keyPath);
        if (endpoint == TlsEndpoint.Server || haveCert || haveKey)
        {
            if (!haveCert || !haveKey)
            {
                string missing = haveCert ? keyPath : certPath;
                throw new ArgumentException($"TLS credentials '{id}': {missing} does not exist; {layout} (QEMU's layout).");
            }

            try
            {
                using X509Certificate2 loaded = X509Certificate2.CreateFromPemFile(certPath, keyPath);
                // Through PKCS#12 so that the key is a persisted one that every TLS backend accepts.
                certificate = X509CertificateLoader.LoadPkcs12(loaded.Export(X509ContentType.Pkcs12), password: null);
            }
            catch (Exception ex) when (ex is CryptographicException or IOException or UnauthorizedAccessException)
            {
                throw new ArgumentException($"TLS credentials '{id}': {certPath} with {keyPath} could not be read as a PEM certificate and its private key: {ex.Message}", ex);
            }
        }

        if (sanityCheck)
        {
            DateTime now = DateTime.Now;
            foreach ((X509Certificate2 cert, string path) in authorities.Select(a => (a, caPath)).Concat(certificate is null ? [] : [(certificate, certPath)]))
            {
                // QEMU's qcrypto_tls_creds_check_cert_times, with the dates.
                if (cert.NotAfter < now)
                {
                    throw new ArgumentException($"TLS credentials '{id}': The certificate {path} has expired ({cert.Subject}, valid until {cert.NotAfter.ToUniversalTime():u}). Issue a new one, or set sanity-check=false to load it anyway (the peer will refuse it).");
                }

                if (cert.NotBefore > now)
                {
                    throw new ArgumentException($"TLS credentials '{id}': The certificate {path} is not yet active ({cert.Subject}, valid from {cert.NotBefore.ToUniversalTime():u}). Check this host's clock, or set sanity-check=false.");
                }
            }
        }

        return new TlsCredentials(id, dir, endpoint, verifyPeer, authorities, certificate);
    }

    /// <summary>
    /// Checks a peer's certificate against <see cref="Authorities"/> only (not the system's roots);
    /// returns null when it chains to one of them, else what is wrong with it.
    /// </summary>
    /// <param name="peer">The certificate the peer presented.</param>
    internal string? CheckChain(X509Certificate2 peer)
    {
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.AddRange(Authorities);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        if (chain.Build(peer))
        {
            return null;
        }

        string status = string.Join("; ", chain.ChainStatus.Select(s => s.StatusInformation.Trim()).Where(s => s.Length > 0).Distinct());
        return $"its certificate ({peer.Subject}) does not chain to a CA in {Path.Combine(Directory, CaCertFile)}{(status.Length > 0 ? ": " + status : string.Empty)}";
    }
}
