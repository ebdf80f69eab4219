namespace Modular.Abstractions.Transports;

/// <summary>
/// A migration URI split into its scheme and the scheme-specific address, as QEMU writes them:
/// <c>tcp:127.0.0.1:4444</c>, <c>unix:/run/mig.sock</c>, <c>file:/tmp/vm.state</c>.
/// </summary>
/// <param name="Scheme">The part before the first colon, lower case; selects the transport plugin.</param>
/// <param name="Address">Everything after the first colon, passed to the plugin as is.</param>
public sealed record TransportEndpoint(string Scheme, string Address)
{
    /// <summary>Parses <c>scheme:address</c>.</summary>
    /// <param name="uri">The migration URI.</param>
    /// <exception cref="FormatException">The URI has no scheme or no address.</exception>
    public static TransportEndpoint Parse(string uri)
    {
        ArgumentNullException.ThrowIfNull(uri);
        int colon = uri.IndexOf(':', StringComparison.Ordinal);
        if (colon <= 0 || colon == uri.Length - 1)
        {
            throw new FormatException(
                $"Migration URI '{uri}' is not of the form scheme:address (for example tcp:127.0.0.1:4444 or unix:/tmp/mig.sock).");
        }

        return new TransportEndpoint(uri[..colon].ToLowerInvariant(), uri[(colon + 1)..]);
    }

    /// <summary>The URI, <c>scheme:address</c>.</summary>
    public override string ToString() => Scheme + ":" + Address;
}
