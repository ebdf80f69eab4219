using System.Collections.Concurrent;
using System.Text.Json.Nodes;

namespace Modular.Core.Qmp;

/// <summary>
/// The QMP commands a server answers. The machine, and later the migration engine, register their
/// commands here; registration may happen before or after the server starts listening. Thread-safe.
/// </summary>
public sealed class QmpCommandRegistry
{
    private readonly ConcurrentDictionary<string, QmpCommand> _commands = new(StringComparer.Ordinal);

    /// <summary>The names of all registered commands, sorted.</summary>
    public IReadOnlyList<string> Names => _commands.Keys.Order(StringComparer.Ordinal).ToArray();

    /// <summary>Registers a command that takes no arguments.</summary>
    /// <param name="name">The command name as QEMU spells it (<c>query-status</c>).</param>
    /// <param name="handler">
    /// Runs the command on a thread-pool thread, one command at a time across all clients. It returns
    /// the <c>return</c> value (null means <c>{}</c>) or throws <see cref="QmpException"/>. The token
    /// is cancelled when the server shuts down.
    /// </param>
    /// <exception cref="InvalidOperationException">A command with that name is already registered.</exception>
    public void Register(string name, Func<QmpArguments, CancellationToken, ValueTask<JsonNode?>> handler) =>
        Register(name, [], handler);

    /// <summary>
    /// Pass as the parameters of a command that checks its argument names itself (object-add: which
    /// names it takes depends on its qom-type, and an unknown type is the error to report first).
    /// </summary>
    public static IReadOnlySet<string> AnyArguments { get; } = new HashSet<string>(StringComparer.Ordinal);

    /// <summary>Registers a command and the names of the arguments it accepts.</summary>
    /// <param name="name">The command name as QEMU spells it (<c>pmemsave</c>).</param>
    /// <param name="parameters">
    /// Every argument name the command knows, required or optional. Any other name is refused before
    /// the handler runs, with QEMU's <c>Parameter 'x' is unexpected</c>.
    /// </param>
    /// <param name="handler">As in <see cref="Register(string, Func{QmpArguments, CancellationToken, ValueTask{JsonNode}})"/>.</param>
    /// <exception cref="InvalidOperationException">A command with that name is already registered.</exception>
    public void Register(string name, IReadOnlyCollection<string> parameters, Func<QmpArguments, CancellationToken, ValueTask<JsonNode?>> handler)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        ArgumentNullException.ThrowIfNull(parameters);
        ArgumentNullException.ThrowIfNull(handler);
        var command = new QmpCommand(name, ReferenceEquals(parameters, AnyArguments) ? AnyArguments : new HashSet<string>(parameters, StringComparer.Ordinal), handler);
        if (!_commands.TryAdd(name, command))
        {
            throw new InvalidOperationException(
                $"The QMP command '{name}' is registered twice; each command must have exactly one handler.");
        }
    }

    /// <summary>True when <paramref name="name"/> is registered.</summary>
    /// <param name="name">A command name.</param>
    public bool Contains(string name) => _commands.ContainsKey(name);

    internal bool TryGet(string name, out QmpCommand command) => _commands.TryGetValue(name, out command!);
}

/// <summary>One registered command: its name, accepted argument names and handler.</summary>
internal sealed record QmpCommand(
    string Name,
    IReadOnlySet<string> Parameters,
    Func<QmpArguments, CancellationToken, ValueTask<JsonNode?>> Handler);
