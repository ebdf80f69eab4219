using System.Collections.Concurrent;

namespace Modular.Core.Migration.Tls;

/// <summary>
/// The machine's TLS objects by id, from the config's objects list or QMP object-add: credentials
/// (QEMU's tls-creds-x509), which the tls-creds migration parameter names, and authorizations
/// (authz-simple, authz-listfile), which tls-authz names. Ids are one namespace, as QEMU's
/// /objects. A migration looks its objects up when it starts. Any thread.
/// </summary>
public sealed class TlsCredentialsRegistry
{
    private readonly ConcurrentDictionary<string, TlsCredentials> _byId = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, TlsAuthorization> _authorizations = new(StringComparer.Ordinal);
    private readonly Lock _adding = new();

    /// <summary>The credentials' ids, sorted.</summary>
    public IReadOnlyList<string> Ids => [.. _byId.Keys.Order(StringComparer.Ordinal)];

    /// <summary>The authorizations' ids, sorted.</summary>
    public IReadOnlyList<string> AuthorizationIds => [.. _authorizations.Keys.Order(StringComparer.Ordinal)];

    /// <summary>True when an object (credentials or authorization) has that id.</summary>
    /// <param name="id">An object id.</param>
    public bool Contains(string id) => _byId.ContainsKey(id) || _authorizations.ContainsKey(id);

    /// <summary>QEMU's id_wellformed, which object ids must pass: letters, digits, '-', '.', '_', starting with a letter.</summary>
    /// <param name="id">An object id.</param>
    public static bool IsWellFormedId(string id) =>
        !string.IsNullOrEmpty(id) && char.IsAsciiLetter(id[0]) && id.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '.' or '_');

    /// <summary>Adds credentials under their id.</summary>
    /// <param name="credentials">Loaded credentials.</param>
    /// <exception cref="ArgumentException">An object with that id exists (QEMU's message).</exception>
    public void Add(TlsCredentials credentials)
    {
        ArgumentNullException.ThrowIfNull(credentials);
        lock (_adding)
        {
            if (Contains(credentials.Id) || !_byId.TryAdd(credentials.Id, credentials))
            {
                throw Duplicate(credentials.Id);
            }
        }

        TlsWarmUp.Start();
    }

    /// <summary>Adds an authorization under its id.</summary>
    /// <param name="authorization">A loaded authorization.</param>
    /// <exception cref="ArgumentException">An object with that id exists (QEMU's message).</exception>
    public void Add(TlsAuthorization authorization)
    {
        ArgumentNullException.ThrowIfNull(authorization);
        lock (_adding)
        {
            if (Contains(authorization.Id) || !_authorizations.TryAdd(authorization.Id, authorization))
            {
                throw Duplicate(authorization.Id);
            }
        }
    }

    private static ArgumentException Duplicate(string id) => new($"attempt to add duplicate property '{id}' to object (type 'container')");

    /// <summary>Removes the object (credentials or authorization) with that id; false when there is none.</summary>
    /// <param name="id">The object id.</param>
    public bool Remove(string id) => _byId.TryRemove(id, out _) || _authorizations.TryRemove(id, out _);

    /// <summary>The authorization the tls-authz parameter <paramref name="id"/> names.</summary>
    /// <param name="id">The tls-authz parameter.</param>
    /// <exception cref="ArgumentException">No such object (QEMU's message).</exception>
    public TlsAuthorization ResolveAuthorization(string id) =>
        _authorizations.TryGetValue(id, out TlsAuthorization? authorization)
            ? authorization
            : throw new ArgumentException($"Authorization object '{id}' not found ({(_authorizations.IsEmpty ? "there are none; add an authz-simple, authz-list or authz-listfile object" : "known: " + string.Join(", ", AuthorizationIds))})");

    /// <summary>
    /// The credentials a migration uses for the tls-creds parameter <paramref name="id"/>, checked
    /// for its end, with QEMU's messages.
    /// </summary>
    /// <param name="id">The tls-creds parameter.</param>
    /// <param name="endpoint">Client on the source, server on the destination.</param>
    /// <exception cref="ArgumentException">No such object, or credentials for the other end.</exception>
    public TlsCredentials Resolve(string id, TlsEndpoint endpoint)
    {
        if (!_byId.TryGetValue(id, out TlsCredentials? credentials))
        {
            string known = _byId.IsEmpty ? "there are none; add one with object-add or the config's objects list" : "known: " + string.Join(", ", Ids);
            throw new ArgumentException($"No TLS credentials with id '{id}' ({known})");
        }

        if (credentials.Endpoint != endpoint)
        {
            string wanted = endpoint == TlsEndpoint.Server ? "server" : "client";
            throw new ArgumentException($"Expecting TLS credentials with a {wanted} endpoint: '{id}' has endpoint={credentials.EndpointName} (the source needs endpoint=client, the destination endpoint=server)");
        }

        return credentials;
    }
}
