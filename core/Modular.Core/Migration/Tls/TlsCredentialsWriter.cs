using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Modular.Core.Migration.Tls;

/// <summary>
/// Writes a small private PKI in QEMU's tls-creds-x509 layout: a CA (<c>ca-cert.pem</c>), a server
/// certificate for the given names (<c>server-cert.pem</c>, <c>server-key.pem</c>) and a client
/// certificate (<c>client-cert.pem</c>, <c>client-key.pem</c>), all signed by that CA; the CA's key
/// is not kept. For trying migration TLS and for tests; a production site uses its own CA.
/// </summary>
public static class TlsCredentialsWriter
{
    /// <summary>What <see cref="Write"/> wrote.</summary>
    /// <param name="Directory">The directory (absolute).</param>
    /// <param name="Files">The files written, in order.</param>
    public sealed record Written(string Directory, IReadOnlyList<string> Files);

    /// <summary>Creates <paramref name="directory"/> if needed and writes the five files into it (keys with mode 0600).</summary>
    /// <param name="directory">Where to write.</param>
    /// <param name="serverNames">Names and IP addresses the server certificate is valid for (subject alternative names); the first is its common name.</param>
    /// <param name="validity">How long the certificates are valid from now.</param>
    /// <param name="caName">The CA's common name (tests make two CAs to check that a foreign one is refused).</param>
    /// <exception cref="ArgumentException">No server name.</exception>
    /// <exception cref="IOException">A file already exists there (nothing is overwritten) or cannot be written.</exception>
    public static Written Write(string directory, IReadOnlyList<string> serverNames, TimeSpan validity, string caName = "Modular migration CA")
    {
        ArgumentException.ThrowIfNullOrEmpty(directory);
        ArgumentNullException.ThrowIfNull(serverNames);
        if (serverNames.Count == 0 || serverNames.Any(string.IsNullOrWhiteSpace))
        {
            throw new ArgumentException("The server certificate needs at least one name or IP address (the destination's host as the source dials it, or the tls-hostname parameter).", nameof(serverNames));
        }

        string dir = Path.GetFullPath(directory);
        string[] names = ["ca-cert.pem", "server-cert.pem", "server-key.pem", "client-cert.pem", "client-key.pem"];
        foreach (string name in names)
        {
            if (File.Exists(Path.Combine(dir, name)))
            {
                throw new IOException($"{Path.Combine(dir, name)} already exists; choose an empty directory (nothing was written).");
            }
        }

        System.IO.Directory.CreateDirectory(dir);
        DateTimeOffset notBefore = DateTimeOffset.UtcNow.AddMinutes(-5);
        DateTimeOffset notAfter = DateTimeOffset.UtcNow.Add(validity);

        using ECDsa caKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var caRequest = new CertificateRequest($"CN={caName}", caKey, HashAlgorithmName.SHA256);
        caRequest.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        caRequest.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        caRequest.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(caRequest.PublicKey, false));
        using X509Certificate2 ca = caRequest.CreateSelfSigned(notBefore, notAfter);

        var san = new SubjectAlternativeNameBuilder();
        foreach (string name in serverNames)
        {
            if (IPAddress.TryParse(name, out IPAddress? ip))
            {
                san.AddIpAddress(ip);
            }
            else
            {
                san.AddDnsName(name);
            }
        }

        var files = new List<string>();
        void WriteFile(string name, string text, bool secret)
        {
            string path = Path.Combine(dir, name);
            var options = new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write };
            if (secret && !OperatingSystem.IsWindows())
            {
                options.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
            }

            using (var stream = new FileStream(path, options))
            using (var writer = new StreamWriter(stream))
            {
                writer.Write(text);
            }

            files.Add(path);
        }

        WriteFile("ca-cert.pem", ca.ExportCertificatePem() + "\n", secret: false);
        Issue("server", serverNames[0], san.Build(), new Oid("1.3.6.1.5.5.7.3.1", "Server Authentication"));
        Issue("client", "Modular migration source", extraExtension: null, new Oid("1.3.6.1.5.5.7.3.2", "Client Authentication"));
        return new Written(dir, files);

        void Issue(string role, string commonName, X509Extension? extraExtension, Oid usage)
        {
            using ECDsa key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
            var request = new CertificateRequest($"CN={commonName}", key, HashAlgorithmName.SHA256);
            request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
            request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature | X509KeyUsageFlags.KeyEncipherment, true));
            request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([usage], false));
            request.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(ca, includeKeyIdentifier: true, includeIssuerAndSerial: false));
            if (extraExtension is not null)
            {
                request.CertificateExtensions.Add(extraExtension);
            }

            byte[] serial = RandomNumberGenerator.GetBytes(16);
            serial[0] &= 0x7f;
            using X509Certificate2 certificate = request.Create(ca.SubjectName, X509SignatureGenerator.CreateForECDsa(caKey), notBefore, notAfter, serial);
            WriteFile(role + "-cert.pem", certificate.ExportCertificatePem() + "\n", secret: false);
            WriteFile(role + "-key.pem", key.ExportPkcs8PrivateKeyPem() + "\n", secret: true);
        }
    }
}
