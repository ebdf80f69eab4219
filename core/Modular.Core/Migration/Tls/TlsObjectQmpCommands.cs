using System.Text.Json.Nodes;
using Modular.Core.Qmp;

namespace Modular.Core.Migration.Tls;

/// <summary>
/// QEMU's object-add and object-del for the one object type Modular has, tls-creds-x509, with
/// QEMU's flat arguments (<c>{"qom-type": "tls-creds-x509", "id": "tls0", "dir": "/path",
/// "endpoint": "server", "verify-peer": true}</c>) and QEMU's error texts where QEMU has them.
/// </summary>
public static class TlsObjectQmpCommands
{
    /// <summary>The arguments object-add takes: qom-type, id and tls-creds-x509's properties.</summary>
    private static readonly string[] ObjectAddParameters = ["qom-type", "id", "dir", "endpoint", "verify-peer"];

    /// <summary>Adds object-add and object-del, which add to and remove from <paramref name="credentials"/>.</summary>
    /// <param name="commands">The QMP server's registry.</param>
    /// <param name="credentials">The machine's TLS credentials (its migration settings').</param>
    public static void Register(QmpCommandRegistry commands, TlsCredentialsRegistry credentials)
    {
        ArgumentNullException.ThrowIfNull(commands);
        ArgumentNullException.ThrowIfNull(credentials);
        commands.Register("object-add", ObjectAddParameters, (args, _) =>
        {
            string type = args.GetString("qom-type");
            if (type != TlsCredentials.QomType)
            {
                throw QmpException.Generic($"Object type '{type}' is not supported by Modular; supported: {TlsCredentials.QomType}");
            }

            string id = args.GetString("id");
            string? dir = args.GetOptionalString("dir");
            string endpoint = args.Has("endpoint") ? args.GetEnum("endpoint", ["client", "server"]) : "client";
            bool verifyPeer = args.GetOptionalBoolean("verify-peer") ?? true;
            if (!TlsCredentialsRegistry.IsWellFormedId(id))
            {
                // QEMU's user_creatable_add_type, with its hint.
                throw QmpException.Generic("Parameter 'id' expects an identifier (identifiers consist of letters, digits, '-', '.', '_', starting with a letter)");
            }

            if (string.IsNullOrEmpty(dir))
            {
                // QEMU's qcrypto_tls_creds_x509_load.
                throw QmpException.Generic("Missing 'dir' property value");
            }

            if (credentials.Ids.Contains(id, StringComparer.Ordinal))
            {
                throw QmpException.Generic($"attempt to add duplicate property '{id}' to object (type 'container')");
            }

            try
            {
                // Read now, as QEMU reads the files at object-add: a bad file is reported here.
                credentials.Add(TlsCredentials.Load(id, dir, endpoint == "server" ? TlsEndpoint.Server : TlsEndpoint.Client, verifyPeer));
            }
            catch (ArgumentException ex)
            {
                throw QmpException.Generic(ex.Message);
            }

            return ValueTask.FromResult<JsonNode?>(new JsonObject());
        });

        commands.Register("object-del", ["id"], (args, _) =>
        {
            string id = args.GetString("id");
            if (!credentials.Remove(id))
            {
                throw QmpException.Generic($"object '{id}' not found");
            }

            return ValueTask.FromResult<JsonNode?>(new JsonObject());
        });
    }
}
