using System.CommandLine;
using System.Text.Json;
using Modular.Core.Migration.Tls;

namespace Modular.Cli.Commands;

/// <summary>
/// <c>modular tls-creds --dir DIR [--hostname NAME]...</c>: writes a private CA with server and client
/// certificates in QEMU's tls-creds-x509 layout, for trying migration TLS, and says how to use them.
/// </summary>
internal static class TlsCredsCommand
{
    /// <summary>How long the certificates are valid.</summary>
    internal const int ValidityDays = 365;

    /// <summary>The names the server certificate is for when no --hostname is given: this host, by name and by loopback address.</summary>
    internal static readonly string[] DefaultHostnames = ["localhost", "127.0.0.1", "::1"];

    internal static Command Create()
    {
        var dirOption = new Option<string>("--dir") { Description = "Where to write ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem and client-key.pem (created if needed; existing files are never overwritten).", Required = true };
        var hostnameOption = new Option<string[]>("--hostname")
        {
            Description = $"A name or IP address the server certificate is for: the destination's host as the source dials it, or its tls-hostname (repeatable; default: {string.Join(", ", DefaultHostnames)}).",
            Arity = ArgumentArity.ZeroOrMore,
            AllowMultipleArgumentsPerToken = false,
        };
        var command = new Command("tls-creds", $"Write a private CA and server and client certificates (valid {ValidityDays} days) in QEMU's tls-creds-x509 layout, for trying migration TLS; print how to use them.");
        command.Options.Add(dirOption);
        command.Options.Add(hostnameOption);
        command.SetAction(async (parse, _) =>
        {
            string[] hostnames = parse.GetValue(hostnameOption) is { Length: > 0 } given ? given : DefaultHostnames;
            TlsCredentialsWriter.Written written;
            try
            {
                written = TlsCredentialsWriter.Write(parse.GetValue(dirOption)!, hostnames, TimeSpan.FromDays(ValidityDays));
            }
            catch (ArgumentException ex)
            {
                await Console.Error.WriteLineAsync("modular tls-creds: " + ex.Message.Split(" (Parameter", 2)[0]);
                return ExitCodes.Usage;
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                await Console.Error.WriteLineAsync("modular tls-creds: " + ex.Message);
                return ExitCodes.Failure;
            }

            await Console.Out.WriteAsync(Hint(written, hostnames));
            return ExitCodes.Success;
        });
        return command;
    }

    /// <summary>The files written and how to use them on each side.</summary>
    private static string Hint(TlsCredentialsWriter.Written written, IReadOnlyList<string> hostnames)
    {
        string dir = JsonEncodedText.Encode(written.Directory).ToString();
        string Object(string endpoint) => $$"""{ "qom-type": "{{TlsCredentials.QomType}}", "id": "tls0", "dir": "{{dir}}", "endpoint": "{{endpoint}}" }""";
        var sb = new System.Text.StringBuilder();
        sb.AppendLine($"Wrote a private CA and certificates in QEMU's {TlsCredentials.QomType} layout (the CA's key was not kept):");
        foreach (string file in written.Files)
        {
            sb.AppendLine("  " + file);
        }

        sb.AppendLine($"The server certificate is for {string.Join(", ", hostnames)} and valid for {ValidityDays} days.");
        sb.AppendLine();
        sb.AppendLine("Destination (modular run --incoming tcp:...), in its config:");
        sb.AppendLine($"  \"objects\": [ {Object("server")} ],");
        sb.AppendLine("  \"migration\": { \"parameters\": { \"tls-creds\": \"tls0\" } }");
        sb.AppendLine("Source, in its config:");
        sb.AppendLine($"  \"objects\": [ {Object("client")} ]");
        sb.AppendLine($"then: modular migrate --qmp SOCKET --tls-creds tls0 tcp:HOST:PORT (HOST one of {string.Join(", ", hostnames)}, or add --tls-hostname NAME).");
        sb.AppendLine("Over QMP instead: object-add with the same keys, then migrate-set-parameters {\"tls-creds\": \"tls0\"}.");
        sb.AppendLine("On two hosts, give the destination ca-cert.pem with the server-* files and the source ca-cert.pem with the client-* files.");
        return sb.ToString();
    }
}
