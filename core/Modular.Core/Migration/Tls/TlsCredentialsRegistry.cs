using System.Collections.Concurrent;

namespace Modular.Core.Migration.Tls;

/// <summary>
/// The machine's TLS credentials objects by id (QEMU's tls-creds-x509 objects, from the config's
/// objects list or QMP object-add). The tls-creds migration parameter names one; a migration looks
/// it up when it starts. Any thread.
/// </summary>
public sealed class TlsCredentialsRegistry
{
    private readonly ConcurrentDictionary<string, TlsCredentials> _byId = new(StringComparer.Ordinal);

    /// <summary>The ids, sorted.</summary>
    public IReadOnlyList<string> Ids => [.. _byId.Keys.Order(StringComparer.Ordinal)];

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
        if (!_byId.TryAdd(credentials.Id, credentials))
        {
            throw new ArgumentException($"attempt to add duplicate property '{credentials.Id}' to object (type 'container')");
        }

        TlsWarmUp.Start();
    }

    /// <summary>Removes the credentials with that id; false when there are none.</summary>
    /// <param name="id">The object id.</param>
    public bool Remove(string id) => _byId.TryRemove(id, out _);

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
