using System.Text.Json.Nodes;
using Modular.Core.Config;
using Modular.Core.Migration.State;
using Modular.Core.Migration.Tls;
using Modular.Core.Qmp;

namespace Modular.Core.Migration.Engine;

/// <summary>Registers the migration QMP commands of one <see cref="MigrationController"/>, with QEMU's argument names.</summary>
public static class MigrationQmpCommands
{
    /// <summary>Adds migrate, migrate-incoming, migrate_cancel, migrate-continue, migrate-start-postcopy, capabilities, parameters, query-migrate, and object-add / object-del for TLS credentials to <paramref name="commands"/>.</summary>
    /// <param name="commands">The QMP server's registry.</param>
    /// <param name="controller">The machine's migration controller.</param>
    public static void Register(QmpCommandRegistry commands, MigrationController controller)
    {
        commands.Register("migrate", ["uri", "detach", "blk", "inc", "resume"], (args, _) =>
        {
            if (args.GetOptionalBoolean("resume") == true)
            {
                controller.ResumeOutgoing(args.GetString("uri"));
            }
            else
            {
                controller.StartOutgoing(args.GetString("uri"));
            }

            return ValueTask.FromResult<JsonNode?>(new JsonObject());
        });

        commands.Register("migrate-pause", (_, _) =>
        {
            controller.PauseMigration();
            return ValueTask.FromResult<JsonNode?>(new JsonObject());
        });

        commands.Register("migrate-recover", ["uri"], async (args, _) =>
        {
            await controller.RecoverIncomingAsync(args.GetString("uri")).ConfigureAwait(false);
            return new JsonObject();
        });

        commands.Register("migrate-incoming", ["uri"], async (args, _) =>
        {
            await controller.StartIncomingAsync(args.GetString("uri")).ConfigureAwait(false);
            return new JsonObject();
        });

        commands.Register("migrate_cancel", (_, _) =>
        {
            if (controller.Outgoing is { } outgoing && !outgoing.Cancel())
            {
                throw QmpException.Generic("Postcopy migration in progress, cannot cancel.");
            }

            return ValueTask.FromResult<JsonNode?>(new JsonObject());
        });

        commands.Register("migrate-continue", ["state"], (args, _) =>
        {
            string wanted = args.GetString("state");
            MigrationStatus? state = Enum.GetValues<MigrationStatus>().Where(s => s.ToQmp() == wanted).Select(s => (MigrationStatus?)s).FirstOrDefault()
                ?? throw QmpException.Generic($"Parameter 'state' does not accept value '{wanted}'");
            MigrationStatus current = controller.Outgoing?.Status.Current ?? MigrationStatus.None;
            if (controller.Outgoing is not { } outgoing || !outgoing.Continue(state.Value))
            {
                throw QmpException.Generic($"Migration not in expected state: {current.ToQmp()}");
            }

            return ValueTask.FromResult<JsonNode?>(new JsonObject());
        });

        commands.Register("migrate-start-postcopy", (_, _) =>
        {
            controller.StartPostcopy();
            return ValueTask.FromResult<JsonNode?>(new JsonObject());
        });

        commands.Register("query-migrate", (_, _) => ValueTask.FromResult<JsonNode?>(controller.Query()));

        commands.Register("calc-dirty-rate", ["calc-time", "calc-time-unit", "sample-pages", "mode"], (args, _) =>
        {
            controller.DirtyRate.Start(args.GetInt64("calc-time"), args.GetOptionalString("calc-time-unit"), args.GetOptionalInt64("sample-pages"), args.GetOptionalString("mode"), controller.MigrationRunning);
            return ValueTask.FromResult<JsonNode?>(new JsonObject());
        });

        commands.Register("query-dirty-rate", ["calc-time-unit"], (args, _) =>
            ValueTask.FromResult<JsonNode?>(controller.DirtyRate.Query(args.GetOptionalString("calc-time-unit"))));

        commands.Register("migrate-set-capabilities", ["capabilities"], (args, _) =>
        {
            var changes = new List<KeyValuePair<string, bool>>();
            foreach (JsonNode? item in args.GetArray("capabilities"))
            {
                var entry = new QmpArguments(item as JsonObject ?? throw QmpException.Generic("Invalid parameter type for 'capabilities', expected: object"));
                changes.Add(new(entry.GetString("capability"), entry.GetBoolean("state")));
            }

            if (controller.Outgoing is { Status.IsFinished: false } || controller.Incoming is { Status.IsFinished: false, Status.Current: not State.MigrationStatus.None })
            {
                throw QmpException.Generic("There's a migration process in progress");
            }

            try
            {
                controller.Settings.SetCapabilities(changes);
                if (changes.Any(c => c.Key == "postcopy-ram" && c.Value))
                {
                    controller.Incoming?.PostcopyEnabledWhileWaiting();
                }
            }
            catch (ArgumentException ex)
            {
                throw QmpException.Generic(ex.Message);
            }

            return ValueTask.FromResult<JsonNode?>(new JsonObject());
        });

        commands.Register("query-migrate-capabilities", (_, _) =>
        {
            MigrationSettingsSnapshot snapshot = controller.Settings.Snapshot();
            var list = new JsonArray();
            foreach (string name in ConfigSchema.Capabilities)
            {
                list.Add(new JsonObject { ["capability"] = name, ["state"] = snapshot.Has(name) });
            }

            return ValueTask.FromResult<JsonNode?>(list);
        });

        commands.Register("migrate-set-parameters", ["downtime-limit", "max-bandwidth", "multifd-channels", "cpu-throttle-initial", "cpu-throttle-increment", "max-cpu-throttle", "throttle-trigger-threshold", "cpu-throttle-tailslow", "xbzrle-cache-size", "max-postcopy-bandwidth", "tls-creds", "tls-hostname", "tls-authz"], (args, _) =>
        {
            // StrOrNull, as QEMU: JSON null sets "" (none). tls-creds may name an object that does
            // not exist yet; the migration looks it up when it starts (QEMU checks it then too).
            string? tlsCreds = args.GetOptionalStringOrNull("tls-creds");
            string? tlsHostname = args.GetOptionalStringOrNull("tls-hostname");
            // tls-authz names an authz-simple, authz-list or authz-listfile object; like tls-creds, it is looked up
            // when an incoming migration starts.
            string? tlsAuthz = args.GetOptionalStringOrNull("tls-authz");

            try
            {
                static int Percent(long value) => (int)Math.Clamp(value, int.MinValue, int.MaxValue);
                long? initial = args.GetOptionalInt64("cpu-throttle-initial"), increment = args.GetOptionalInt64("cpu-throttle-increment"), max = args.GetOptionalInt64("max-cpu-throttle"), threshold = args.GetOptionalInt64("throttle-trigger-threshold");
                bool? tailSlow = args.GetOptionalBoolean("cpu-throttle-tailslow");
                controller.Settings.SetParameters(args.GetOptionalInt64("downtime-limit"), args.GetOptionalUInt64("max-bandwidth"), args.GetOptionalInt64("multifd-channels"), current => current with
                {
                    Initial = initial is { } i ? Percent(i) : current.Initial,
                    Increment = increment is { } c ? Percent(c) : current.Increment,
                    Max = max is { } m ? Percent(m) : current.Max,
                    TriggerThreshold = threshold is { } t ? Percent(t) : current.TriggerThreshold,
                    TailSlow = tailSlow ?? current.TailSlow,
                }, args.GetOptionalUInt64("xbzrle-cache-size"), tlsCreds, tlsHostname, args.GetOptionalUInt64("max-postcopy-bandwidth"), tlsAuthz);
            }
            catch (ArgumentOutOfRangeException ex)
            {
                throw QmpException.Generic(ex.Message.Split(" (Parameter", 2)[0]);
            }

            return ValueTask.FromResult<JsonNode?>(new JsonObject());
        });

        commands.Register("query-migrate-parameters", (_, _) =>
        {
            MigrationSettingsSnapshot snapshot = controller.Settings.Snapshot();
            return ValueTask.FromResult<JsonNode?>(new JsonObject
            {
                ["downtime-limit"] = snapshot.DowntimeLimitMs,
                ["max-bandwidth"] = snapshot.MaxBandwidth,
                ["multifd-channels"] = snapshot.MultifdChannels,
                ["cpu-throttle-initial"] = snapshot.Throttle.Initial,
                ["cpu-throttle-increment"] = snapshot.Throttle.Increment,
                ["max-cpu-throttle"] = snapshot.Throttle.Max,
                ["throttle-trigger-threshold"] = snapshot.Throttle.TriggerThreshold,
                ["cpu-throttle-tailslow"] = snapshot.Throttle.TailSlow,
                ["xbzrle-cache-size"] = snapshot.XbzrleCacheSize,
                ["max-postcopy-bandwidth"] = snapshot.MaxPostcopyBandwidth,
                ["tls-creds"] = snapshot.TlsCreds,
                ["tls-hostname"] = snapshot.TlsHostname,
                ["tls-authz"] = snapshot.TlsAuthz,
            });
        });

        TlsObjectQmpCommands.Register(commands, controller.Settings.TlsCredentials);
    }
}
