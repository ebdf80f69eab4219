using System.Text.Json.Nodes;
using Modular.Core.Migration.Tls;
using Modular.Tests.Support;

namespace Modular.Tests.EndToEnd;

/// <summary>
/// Two real <c>modular</c> processes migrating the KVM A/B guest (256 MiB) in TLS, set up as QEMU
/// users set it up: the destination's credentials from its config (an objects entry and the
/// tls-creds parameter, and an authz-simple that tls-authz names), the source's with QMP object-add
/// and migrate-set-parameters.
/// </summary>
[TestClass]
public sealed class TlsEndToEndTests
{
    [TestMethod]
    [Timeout(240_000, CooperativeCancellation = true)]
    public async Task Tls_DestinationKilledMidMigration_SourceFailsClearly_GuestRunsOnSource()
    {
        await using MigrationPair pair = MigrationPair.Create();
        await StartInTlsAsync(pair, "tcp");
        string error = await PrecopyFailureTests.KillDestinationMidMigrationAsync(pair, 20_000_000);
        StringAssert.Contains(error, $"the migration connection {pair.DestinationUri}");
        Console.WriteLine(error);
    }

    [TestMethod]
    [Timeout(300_000, CooperativeCancellation = true)]
    [DataRow("tcp")]
    [DataRow("unix")]
    public async Task Tls_MigrationCompletes_RamChecks_GuestContinuesOnDestination(string scheme)
    {
        await using MigrationPair pair = MigrationPair.Create();
        await StartInTlsAsync(pair, scheme);
        JsonNode? parameters = await pair.Source.Qmp.ExecuteAsync("query-migrate-parameters");
        Assert.AreEqual("tls0", parameters?["tls-creds"]?.GetValue<string>(), parameters?.ToJsonString());

        JsonObject result = await pair.MigrateToEndAsync();
        Assert.AreEqual("completed", result["status"]?.GetValue<string>(), result.ToJsonString());
        Assert.AreEqual("postmigrate", await pair.Source.RunStateAsync());
        await PrecopyEndToEndTests.AssertGuestContinuesAsync(pair.Destination);
    }

    /// <summary>
    /// A TLS destination's config overrides: server credentials tls0 from <paramref name="pki"/> and
    /// tls-authz auth0, which lets in only the source certificate TlsCredentialsWriter issues.
    /// </summary>
    internal static string[] DestinationArguments(string pki) =>
    [
        "--set", "objects[0].qom-type=tls-creds-x509",
        "--set", "objects[0].id=tls0",
        "--set", "objects[0].dir=" + pki,
        "--set", "objects[0].endpoint=server",
        "--set", "migration.parameters.tls-creds=tls0",
        "--set", "objects[1].qom-type=authz-simple",
        "--set", "objects[1].id=auth0",
        "--set", "objects[1].identity=CN=Modular migration source",
        "--set", "migration.parameters.tls-authz=auth0",
    ];

    /// <summary>Both processes, with TLS set up on each side, the source's guest running.</summary>
    private static async Task StartInTlsAsync(MigrationPair pair, string scheme)
    {
        string pki = pair.PathFor("pki");
        TlsCredentialsWriter.Write(pki, ["localhost", "127.0.0.1"], TimeSpan.FromDays(1));
        string listen = scheme == "tcp" ? "tcp:127.0.0.1:0" : "unix:" + pair.PathFor("mig.sock");
        await pair.StartDestinationAsync(listen, extra: DestinationArguments(pki));
        await pair.StartSourceAsync();
        await pair.Source.Qmp.ExecuteAsync("object-add", new JsonObject
        {
            ["qom-type"] = "tls-creds-x509",
            ["id"] = "tls0",
            ["dir"] = pki,
            ["endpoint"] = "client",
        });
        // The A/B guest rewrites its 256 MiB at about 255 MB/s; TLS on this 2-core host moves 0.3-0.8 GB/s
        // with both processes sharing the cores, so the default 300 ms would make convergence a matter of
        // luck. This test is about TLS carrying the migration intact, not about convergence.
        await pair.SetSourceParametersAsync(new JsonObject { ["tls-creds"] = "tls0", ["tls-hostname"] = scheme == "unix" ? "localhost" : "", ["downtime-limit"] = 5000 });
    }
}
