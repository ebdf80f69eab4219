using System.Text.Json.Nodes;
using Modular.Core.Qmp;

namespace Modular.Core.Migration.Tls;

/// <summary>
/// QEMU's object-add and object-del for the object types Modular has: tls-creds-x509, authz-simple,
/// authz-list (<c>policy</c>, <c>rules</c>) and authz-listfile, with QEMU's flat arguments (<c>{"qom-type": "tls-creds-x509", "id": "tls0",
/// "dir": "/path", "endpoint": "server", "verify-peer": true}</c>, <c>{"qom-type": "authz-simple",
/// "id": "auth0", "identity": "CN=src.example"}</c>, <c>{"qom-type": "authz-listfile", "id":
/// "auth0", "filename": "/path/rules.json", "refresh": true}</c>) and QEMU's error texts where QEMU has them.
/// </summary>
public static class TlsObjectQmpCommands
{
    /// <summary>The arguments object-add takes: qom-type, id and the properties of each type.</summary>
    private static readonly string[] ObjectAddParameters = ["qom-type", "id", "dir", "endpoint", "verify-peer", "sanity-check", "identity", "filename", "refresh", "policy", "rules"];

    /// <summary>Adds object-add and object-del, which add to and remove from <paramref name="credentials"/>.</summary>
    /// <param name="commands">The QMP server's registry.</param>
    /// <param name="credentials">The machine's TLS credentials (its migration settings').</param>
    public static void Register(QmpCommandRegistry commands, TlsCredentialsRegistry credentials)
    {
        ArgumentNullException.ThrowIfNull(commands);
        ArgumentNullException.ThrowIfNull(credentials);
        // The argument names are checked here, after qom-type: an unsupported type is the thing to
        // report even when it comes with properties of its own (QEMU's QAPI checks the type first too).
        commands.Register("object-add", QmpCommandRegistry.AnyArguments, (args, _) =>
        {
            string type = args.GetString("qom-type");
            if (type != TlsCredentials.QomType && !TlsAuthorization.Types.Contains(type))
            {
                throw QmpException.Generic($"Object type '{type}' is not supported by Modular; supported: {TlsCredentials.QomType}, {string.Join(", ", TlsAuthorization.Types)}");
            }

            if (args.Names.FirstOrDefault(name => !ObjectAddParameters.Contains(name)) is { } unknown)
            {
                throw QmpException.Generic($"Parameter '{unknown}' is unexpected");
            }

            string[] foreign = type switch
            {
                TlsAuthorization.SimpleType => ["dir", "endpoint", "verify-peer", "sanity-check", "filename", "refresh", "policy", "rules"],
                TlsAuthorization.ListFileType => ["dir", "endpoint", "verify-peer", "sanity-check", "identity", "policy", "rules"],
                TlsAuthorization.ListType => ["dir", "endpoint", "verify-peer", "sanity-check", "identity", "filename", "refresh"],
                _ => ["identity", "filename", "refresh", "policy", "rules"],
            };
            if (foreign.FirstOrDefault(args.Has) is { } unexpected)
            {
                // QEMU's words for a property the type does not have.
                throw QmpException.Generic($"Property '{type}.{unexpected}' not found");
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

            if (type != TlsCredentials.QomType)
            {
                AddAuthorization(credentials, type, id, args);
                return ValueTask.FromResult<JsonNode?>(new JsonObject());
            }

            if (string.IsNullOrEmpty(dir))
            {
                // QEMU's qcrypto_tls_creds_x509_load.
                throw QmpException.Generic("Missing 'dir' property value");
            }

            if (credentials.Contains(id))
            {
                throw QmpException.Generic($"attempt to add duplicate property '{id}' to object (type 'container')");
            }

            try
            {
                // Read now, as QEMU reads the files at object-add: a bad file is reported here.
                credentials.Add(TlsCredentials.Load(id, dir, endpoint == "server" ? TlsEndpoint.Server : TlsEndpoint.Client, verifyPeer, args.GetOptionalBoolean("sanity-check") ?? true));
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

    /// <summary>object-add of authz-simple (identity) or authz-listfile (filename, refresh: the file is read now).</summary>
    private static void AddAuthorization(TlsCredentialsRegistry registry, string type, string id, QmpArguments args)
    {
        TlsAuthorization authorization;
        if (type == TlsAuthorization.SimpleType)
        {
            string identity = args.GetOptionalString("identity") is { Length: > 0 } given
                ? given
                : throw QmpException.Generic("Missing 'identity' property value"); // as QEMU's authz-simple
            authorization = new SimpleAuthorization(id, identity);
        }
        else if (type == TlsAuthorization.ListType)
        {
            // QEMU's authz-list properties: policy (allow or deny, default deny) and rules (a list).
            var properties = new JsonObject();
            if (args.Has("policy"))
            {
                properties["policy"] = args.GetEnum("policy", ["allow", "deny"]);
            }

            if (args.GetOptionalArray("rules") is { } rules)
            {
                properties["rules"] = rules.DeepClone();
            }

            try
            {
                authorization = ListAuthorization.Create(id, System.Text.Json.JsonSerializer.SerializeToElement(properties));
            }
            catch (ArgumentException ex)
            {
                throw QmpException.Generic(ex.Message);
            }
        }
        else
        {
            string filename = args.GetOptionalString("filename") is { Length: > 0 } given
                ? given
                : throw QmpException.Generic("Missing 'filename' property value");
            try
            {
                authorization = ListFileAuthorization.Load(id, filename, args.GetOptionalBoolean("refresh") ?? true);
            }
            catch (ArgumentException ex)
            {
                throw QmpException.Generic(ex.Message);
            }
        }

        try
        {
            registry.Add(authorization);
        }
        catch (ArgumentException ex)
        {
            throw QmpException.Generic(ex.Message);
        }
    }
}
