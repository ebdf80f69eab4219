using System.Security.Cryptography.X509Certificates;
using System.Text;
using System.Text.Json;

namespace Modular.Core.Migration.Tls;

/// <summary>
/// Which sources a TLS destination accepts, by the distinguished name of their certificate: QEMU's
/// authorization objects, which the tls-authz parameter names (<c>authz-simple</c>: one identity;
/// <c>authz-list</c>: rules given with the object; <c>authz-listfile</c>: rules in a JSON file). The name is written as RFC 4514 text, most specific
/// part first, as QEMU (GnuTLS) writes it: <c>CN=src.example,O=Example,C=GB</c>.
/// </summary>
public abstract class TlsAuthorization
{
    /// <summary>QEMU's QOM type of a single allowed identity.</summary>
    public const string SimpleType = "authz-simple";

    /// <summary>QEMU's QOM type of a rule list read from a JSON file.</summary>
    public const string ListFileType = "authz-listfile";

    /// <summary>QEMU's QOM type of a rule list given with the object (its <c>rules</c> and <c>policy</c> properties).</summary>
    public const string ListType = "authz-list";

    /// <summary>The QOM types Modular knows.</summary>
    public static IReadOnlyList<string> Types { get; } = [SimpleType, ListType, ListFileType];

    private protected TlsAuthorization(string id) => Id = id;

    /// <summary>The object id that tls-authz names.</summary>
    public string Id { get; }

    /// <summary>Whether <paramref name="identity"/> may connect; <paramref name="why"/> says which rule decided.</summary>
    /// <param name="identity">The client certificate's subject as RFC 4514 text (<see cref="Identity"/>).</param>
    /// <param name="why">The rule or default that decided, for the log and the refusal.</param>
    public abstract bool IsAllowed(string identity, out string why);

    /// <summary>A certificate's subject as RFC 4514 text, as QEMU compares it: most specific part first, no spaces, short names for the usual attributes.</summary>
    /// <param name="name">The subject.</param>
    public static string Identity(X500DistinguishedName name)
    {
        ArgumentNullException.ThrowIfNull(name);
        var text = new StringBuilder();
        foreach (X500RelativeDistinguishedName rdn in name.EnumerateRelativeDistinguishedNames(reversed: true))
        {
            if (text.Length > 0)
            {
                text.Append(',');
            }

            string oid = rdn.GetSingleElementType().Value ?? "";
            string? value = rdn.GetSingleElementValue();
            string? shortName = oid switch
            {
                "2.5.4.3" => "CN",
                "2.5.4.7" => "L",
                "2.5.4.8" => "ST",
                "2.5.4.10" => "O",
                "2.5.4.11" => "OU",
                "2.5.4.6" => "C",
                "2.5.4.9" => "STREET",
                "0.9.2342.19200300.100.1.25" => "DC",
                "0.9.2342.19200300.100.1.1" => "UID",
                _ => null,
            };
            if (shortName is null || value is null)
            {
                // RFC 4514: an attribute without a short name is its OID with the value's DER in hex.
                text.Append(oid).Append("=#").Append(Convert.ToHexStringLower(rdn.RawData.Span));
                continue;
            }

            text.Append(shortName).Append('=').Append(Escape(value));
        }

        return text.ToString();
    }

    /// <summary>RFC 4514 section 2.4's escapes.</summary>
    private static string Escape(string value)
    {
        var text = new StringBuilder(value.Length);
        for (int i = 0; i < value.Length; i++)
        {
            char c = value[i];
            bool escape = c is ',' or '+' or '"' or '\\' or '<' or '>' or ';'
                || (i == 0 && c is ' ' or '#')
                || (i == value.Length - 1 && c == ' ');
            if (escape)
            {
                text.Append('\\');
            }

            text.Append(c);
        }

        return text.ToString();
    }

    /// <summary>fnmatch(3) without flags, as QEMU's glob rules use it: <c>*</c>, <c>?</c> and <c>[...]</c> sets (with <c>!</c> and ranges).</summary>
    /// <param name="pattern">The pattern.</param>
    /// <param name="text">The identity.</param>
    public static bool GlobMatches(string pattern, string text)
    {
        ArgumentNullException.ThrowIfNull(pattern);
        ArgumentNullException.ThrowIfNull(text);
        int p = 0, t = 0, starP = -1, starT = 0;
        while (t < text.Length)
        {
            if (p < pattern.Length && pattern[p] == '*')
            {
                starP = p++;
                starT = t;
                continue;
            }

            if (p < pattern.Length && MatchOne(pattern, ref p, text[t]))
            {
                t++;
                continue;
            }

            if (starP < 0)
            {
                return false;
            }

            p = starP + 1;
            t = ++starT;
        }

        while (p < pattern.Length && pattern[p] == '*')
        {
            p++;
        }

        return p == pattern.Length;
    }

    /// <summary>Matches one character at <paramref name="p"/> (a literal, '?', '\x' or a set) and moves past the pattern element when it matches.</summary>
    private static bool MatchOne(string pattern, ref int p, char c)
    {
        char first = pattern[p];
        if (first == '?')
        {
            p++;
            return true;
        }

        if (first == '\\' && p + 1 < pattern.Length)
        {
            if (pattern[p + 1] != c)
            {
                return false;
            }

            p += 2;
            return true;
        }

        if (first == '[')
        {
            int i = p + 1;
            bool negate = i < pattern.Length && pattern[i] is '!' or '^';
            if (negate)
            {
                i++;
            }

            bool matched = false;
            bool firstInSet = true;
            while (i < pattern.Length && (pattern[i] != ']' || firstInSet))
            {
                firstInSet = false;
                char low = pattern[i];
                if (i + 2 < pattern.Length && pattern[i + 1] == '-' && pattern[i + 2] != ']')
                {
                    matched |= c >= low && c <= pattern[i + 2];
                    i += 3;
                }
                else
                {
                    matched |= c == low;
                    i++;
                }
            }

            if (i >= pattern.Length)
            {
                // No closing bracket: '[' is an ordinary character.
                if (c != '[')
                {
                    return false;
                }

                p++;
                return true;
            }

            if (matched == negate)
            {
                return false;
            }

            p = i + 1;
            return true;
        }

        if (first != c)
        {
            return false;
        }

        p++;
        return true;
    }
}

/// <summary>QEMU's authz-simple: exactly one identity is allowed.</summary>
/// <param name="id">The object id.</param>
/// <param name="identity">The allowed identity (for x509: the client certificate's subject as RFC 4514 text).</param>
public sealed class SimpleAuthorization(string id, string identity) : TlsAuthorization(id)
{
    /// <summary>The one identity allowed.</summary>
    public string AllowedIdentity { get; } = identity;

    /// <inheritdoc/>
    public override bool IsAllowed(string identity, out string why)
    {
        bool allowed = string.Equals(identity, AllowedIdentity, StringComparison.Ordinal);
        why = allowed ? $"{SimpleType} '{Id}' names it" : $"{SimpleType} '{Id}' allows only '{AllowedIdentity}'";
        return allowed;
    }
}

/// <summary>
/// QEMU's rule list (QAuthZListRule): <c>{"rules": [{"match": "CN=*.example.com,*", "policy":
/// "allow", "format": "glob"}], "policy": "deny"}</c>. The first rule that matches decides, else the
/// list's policy (default deny); a rule's format is exact (the default) or glob (fnmatch).
/// </summary>
internal sealed class AuthzRuleList
{
    /// <summary>QEMU's format, for messages.</summary>
    internal const string Example = "{\"rules\": [{\"match\": \"CN=src.example\", \"policy\": \"allow\", \"format\": \"exact\"}], \"policy\": \"deny\"}";

    private AuthzRuleList(IReadOnlyList<Rule> rules, bool defaultAllow)
    {
        Rules = rules;
        DefaultAllow = defaultAllow;
    }

    private IReadOnlyList<Rule> Rules { get; }

    private bool DefaultAllow { get; }

    /// <summary>Parses a rule list; <paramref name="problem"/> turns what is wrong into the exception's message.</summary>
    /// <exception cref="ArgumentException">Not a rule list; the message says what is wrong (through <paramref name="problem"/>).</exception>
    internal static AuthzRuleList Parse(JsonElement root, Func<string, string> problem)
    {
        if (root.ValueKind != JsonValueKind.Object)
        {
            throw new ArgumentException(problem("is not a JSON object"));
        }

        bool defaultAllow = root.TryGetProperty("policy", out JsonElement policy) && Policy(policy, "policy");
        var rules = new List<Rule>();
        if (root.TryGetProperty("rules", out JsonElement list))
        {
            if (list.ValueKind != JsonValueKind.Array)
            {
                throw new ArgumentException(problem("has rules that are not a list"));
            }

            int n = 0;
            foreach (JsonElement rule in list.EnumerateArray())
            {
                string where = $"rules[{n++}]";
                if (rule.ValueKind != JsonValueKind.Object || !rule.TryGetProperty("match", out JsonElement match) || match.ValueKind != JsonValueKind.String)
                {
                    throw new ArgumentException(problem($"has {where} without a \"match\" string"));
                }

                if (!rule.TryGetProperty("policy", out JsonElement rulePolicy))
                {
                    throw new ArgumentException(problem($"has {where} without a \"policy\" (allow or deny)"));
                }

                bool glob = false;
                if (rule.TryGetProperty("format", out JsonElement format))
                {
                    glob = format.ValueKind == JsonValueKind.String ? format.GetString() switch
                    {
                        "exact" => false,
                        "glob" => true,
                        _ => throw new ArgumentException(problem($"has {where}.format '{format.GetString()}' (expected exact or glob)")),
                    } : throw new ArgumentException(problem($"has {where}.format that is not a string"));
                }

                rules.Add(new Rule(match.GetString()!, Policy(rulePolicy, where + ".policy"), glob));
            }
        }

        return new AuthzRuleList(rules, defaultAllow);

        bool Policy(JsonElement value, string where) => value.ValueKind == JsonValueKind.String ? value.GetString() switch
        {
            "allow" => true,
            "deny" => false,
            _ => throw new ArgumentException(problem($"has {where} '{value.GetString()}' (expected allow or deny)")),
        } : throw new ArgumentException(problem($"has {where} that is not a string"));
    }

    /// <summary>Whether <paramref name="identity"/> is allowed, and the rule (of <paramref name="source"/>) or default that decided.</summary>
    internal bool IsAllowed(string identity, string source, out string why)
    {
        for (int i = 0; i < Rules.Count; i++)
        {
            Rule rule = Rules[i];
            bool matches = rule.Glob ? TlsAuthorization.GlobMatches(rule.Match, identity) : string.Equals(rule.Match, identity, StringComparison.Ordinal);
            if (matches)
            {
                why = $"rule {i} of {source} ('{rule.Match}', {(rule.Glob ? "glob" : "exact")}) says {(rule.Allow ? "allow" : "deny")}";
                return rule.Allow;
            }
        }

        why = $"no rule of {source} matches; its policy is {(DefaultAllow ? "allow" : "deny")}";
        return DefaultAllow;
    }

    private sealed record Rule(string Match, bool Allow, bool Glob);
}

/// <summary>
/// QEMU's authz-list: the rule list given with the object, as its <c>rules</c> and <c>policy</c>
/// properties (object-add or the config's objects), in <see cref="AuthzRuleList"/>'s format.
/// </summary>
public sealed class ListAuthorization : TlsAuthorization
{
    private readonly AuthzRuleList _rules;

    private ListAuthorization(string id, AuthzRuleList rules)
        : base(id) => _rules = rules;

    /// <summary>Makes the object from its properties, <c>{"policy": "deny", "rules": [...]}</c> (both optional: no rules and deny).</summary>
    /// <param name="id">The object id.</param>
    /// <param name="properties">The policy and rules.</param>
    /// <exception cref="ArgumentException">The rules are malformed; the message names the object and what is wrong.</exception>
    public static ListAuthorization Create(string id, JsonElement properties) =>
        new(id, AuthzRuleList.Parse(properties, what => $"{ListType} '{id}' {what}. Expected QEMU's format: {AuthzRuleList.Example}."));

    /// <inheritdoc/>
    public override bool IsAllowed(string identity, out string why) => _rules.IsAllowed(identity, $"{ListType} '{Id}'", out why);
}

/// <summary>
/// QEMU's authz-listfile: the rule list of <see cref="AuthzRuleList"/> in a JSON file. With refresh
/// (QEMU's default) the file is read again at every check, so an edited list takes effect for the
/// next migration without a restart.
/// </summary>
public sealed class ListFileAuthorization : TlsAuthorization
{
    private readonly object _gate = new();
    private AuthzRuleList _rules;

    private ListFileAuthorization(string id, string path, bool refresh, AuthzRuleList rules)
        : base(id)
    {
        FileName = path;
        Refresh = refresh;
        _rules = rules;
    }

    /// <summary>The rules file (absolute).</summary>
    public string FileName { get; }

    /// <summary>Whether the file is read again at each check.</summary>
    public bool Refresh { get; }

    /// <summary>Reads the file now (a bad file is reported at object-add, as in QEMU).</summary>
    /// <param name="id">The object id.</param>
    /// <param name="filename">The rules file.</param>
    /// <param name="refresh">Read it again at each check.</param>
    /// <exception cref="ArgumentException">The file is missing or not a rule list; the message names it and the problem.</exception>
    public static ListFileAuthorization Load(string id, string filename, bool refresh = true)
    {
        ArgumentException.ThrowIfNullOrEmpty(filename);
        string path = Path.GetFullPath(filename);
        return new ListFileAuthorization(id, path, refresh, Read(id, path));
    }

    /// <inheritdoc/>
    public override bool IsAllowed(string identity, out string why)
    {
        AuthzRuleList rules;
        lock (_gate)
        {
            if (Refresh)
            {
                try
                {
                    _rules = Read(Id, FileName);
                }
                catch (ArgumentException ex)
                {
                    // A list being edited, or broken: refuse rather than guess.
                    why = ex.Message;
                    return false;
                }
            }

            rules = _rules;
        }

        return rules.IsAllowed(identity, FileName, out why);
    }

    private static AuthzRuleList Read(string id, string path)
    {
        string Problem(string what) => $"{ListFileType} '{id}': {path} {what}. Expected QEMU's format: {AuthzRuleList.Example}.";
        string text;
        try
        {
            text = File.ReadAllText(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new ArgumentException(Problem("cannot be read: " + ex.Message), ex);
        }

        try
        {
            using var doc = JsonDocument.Parse(text);
            return AuthzRuleList.Parse(doc.RootElement, Problem);
        }
        catch (JsonException ex)
        {
            throw new ArgumentException(Problem("is not valid JSON: " + ex.Message), ex);
        }
    }
}
