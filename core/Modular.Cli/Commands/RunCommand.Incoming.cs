using Microsoft.Extensions.Logging;
using Modular.Core.Config;
using Modular.Core.Machine;
using Modular.Core.Plugins;
using Modular.Core.Qmp;

namespace Modular.Cli.Commands;

/// <summary>The incoming-migration part of <c>modular run</c>.</summary>
internal static partial class RunCommand
{
    private static Task StartIncomingAsync(VirtualMachine machine, ModularConfig config, PluginCatalog plugins, QmpServer? qmp, ILoggerFactory loggers, CancellationToken cancellationToken)
    {
        _ = (machine, config, plugins, qmp, loggers, cancellationToken);
        throw new MachineCreationException($"migration.incoming: incoming migration ({config.Migration.Incoming}) is not implemented yet in this build.", null, isConfigError: true);
    }
}
