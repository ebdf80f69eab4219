using Modular.Abstractions.Transports;
using Modular.Core.Migration.Stream;

namespace Modular.Core.Migration.Engine;

/// <summary>Commands on the destination's main incoming task.</summary>
public sealed partial class IncomingMigration
{
    private async ValueTask HandleCommandAsync(StreamCommand command, IMigrationConnection connection, MigrationStreamReader reader, long at)
    {
        switch (command)
        {
            case OpenReturnPathCommand:
                _returnPath ??= new ReturnPathWriter(connection.Transport.Output);
                break;
            case PingCommand ping:
                if (_returnPath is null)
                {
                    throw reader.ErrorAt(at, "PING before OPEN_RETURN_PATH");
                }

                await _returnPath.SendAsync(ReturnPathMessage.Pong(ping.Value)).ConfigureAwait(false);
                break;
            default:
                await HandlePostcopyCommandAsync(command, connection, reader, at).ConfigureAwait(false);
                break;
        }
    }
}
