using System.Text.Json.Nodes;

namespace Modular.Core.Qmp;

/// <summary>One asynchronous QMP event as a client received it.</summary>
/// <param name="Name">The <c>event</c> member (<c>STOP</c>, <c>RESUME</c>, ...).</param>
/// <param name="Data">The <c>data</c> member, or null when the event had none.</param>
/// <param name="Seconds">The <c>timestamp.seconds</c> member (Unix time; -1 if the server had no clock).</param>
/// <param name="Microseconds">The <c>timestamp.microseconds</c> member.</param>
public sealed record QmpEvent(string Name, JsonObject? Data, long Seconds, long Microseconds)
{
    /// <summary>The timestamp as a point in time.</summary>
    public DateTimeOffset Timestamp => DateTimeOffset.FromUnixTimeSeconds(Seconds).AddTicks(Microseconds * TimeSpan.TicksPerMicrosecond);
}
