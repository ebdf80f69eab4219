namespace Modular.Core.Migration.State;

/// <summary>
/// The destination's postcopy state (the seed's "Postcopy states"):
/// <c>None ──ADVISE──► Advise ──LISTEN──► Listening ──RUN──► Running ──► End</c>.
/// </summary>
public enum PostcopyState
{
    /// <summary>Postcopy was not advised.</summary>
    None = 0,

    /// <summary>POSTCOPY_ADVISE arrived: the fault backend was checked and RAM prepared.</summary>
    Advise = 1,

    /// <summary>POSTCOPY_LISTEN arrived: the listen thread owns the stream and RAM is armed.</summary>
    Listening = 2,

    /// <summary>POSTCOPY_RUN arrived: the vCPUs run.</summary>
    Running = 3,

    /// <summary>All pages arrived; the listen thread cleaned up.</summary>
    End = 4,
}

/// <summary>Moves a <see cref="PostcopyState"/> only along ADVISE → LISTEN → RUNNING → END. Any thread.</summary>
public sealed class PostcopyStateMachine
{
    private int _state;

    /// <summary>The current state.</summary>
    public PostcopyState Current => (PostcopyState)Volatile.Read(ref _state);

    /// <summary>True when <paramref name="to"/> directly follows <paramref name="from"/>.</summary>
    /// <param name="from">The current state.</param>
    /// <param name="to">The wanted state.</param>
    public static bool IsLegal(PostcopyState from, PostcopyState to) => (int)to == (int)from + 1 && to <= PostcopyState.End;

    /// <summary>Moves to <paramref name="to"/>, or throws naming both states.</summary>
    /// <param name="to">The wanted state.</param>
    /// <exception cref="IllegalTransitionException">The move skips or goes back.</exception>
    public void MoveTo(PostcopyState to)
    {
        while (true)
        {
            int seen = Volatile.Read(ref _state);
            var from = (PostcopyState)seen;
            if (!IsLegal(from, to))
            {
                throw new IllegalTransitionException($"Postcopy state cannot move from {Name(from)} to {Name(to)}; the order is ADVISE, LISTEN, RUNNING, END.");
            }

            if (Interlocked.CompareExchange(ref _state, (int)to, seen) == seen)
            {
                return;
            }
        }
    }

    /// <summary>The state's upper-case name as the seed writes it.</summary>
    /// <param name="state">The state.</param>
    public static string Name(PostcopyState state) => state switch
    {
        PostcopyState.None => "NONE",
        PostcopyState.Advise => "ADVISE",
        PostcopyState.Listening => "LISTEN",
        PostcopyState.Running => "RUNNING",
        PostcopyState.End => "END",
        _ => state.ToString(),
    };
}
