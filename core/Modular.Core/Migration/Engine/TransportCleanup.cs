using Microsoft.Extensions.Logging;

namespace Modular.Core.Migration.Engine;

/// <summary>
/// Disposes a transport plugin's connection or listener at the end of a migration. A plugin that
/// throws while closing must not turn a finished migration (completed or failed for its own
/// reason) into a different failure: the exception is logged as a warning naming the plugin's
/// object, and the migration's outcome stands.
/// </summary>
internal static class TransportCleanup
{
    internal static async ValueTask DisposeAsync(IAsyncDisposable disposable, ILogger logger, string what)
    {
        try
        {
            await disposable.DisposeAsync().ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            logger.LogWarning("Closing {What} failed ({Type}: {Error}); the transport plugin should not throw while closing. The migration's outcome is unchanged.", what, ex.GetType().Name, ex.Message);
        }
    }
}
