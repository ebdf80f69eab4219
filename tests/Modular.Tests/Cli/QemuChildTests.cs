using System.Diagnostics;
using System.Text.Json.Nodes;
using Modular.Cli.Children;
using Modular.Core.Migration.Tls;
using Modular.Core.Qmp;

namespace Modular.Tests.Cli;

/// <summary>
/// The bench's QEMU peer (<see cref="QemuChild"/>): its command line, and, where QEMU is installed,
/// a real QEMU running the A/B guest driven over QMP the way the bench drives Modular.
/// </summary>
[TestClass]
public sealed class QemuChildTests
{
    [TestMethod]
    public void TheCommandLineMatchesModularsMachine_AndOnlyADestinationWaitsForMigrateIncoming()
    {
        IReadOnlyList<string> source = QemuChild.Arguments("/run/x", "qsrc0", "/g/ab-guest.elf", 1UL << 30, incomingDefer: false);
        IReadOnlyList<string> destination = QemuChild.Arguments("/run/x", "qdst0", "/g/ab-guest.elf", 1UL << 30, incomingDefer: true);

        string joined = string.Join(' ', source);
        StringAssert.Contains(joined, "-accel kvm -M pc -smp 1 -m 1024M -nodefaults");
        StringAssert.Contains(joined, "-serial file:/run/x/qsrc0.serial");
        StringAssert.Contains(joined, "-qmp unix:/run/x/qsrc0.qmp,server=on,wait=off");
        StringAssert.Contains(joined, "-kernel /g/ab-guest.elf");
        StringAssert.Contains(joined, "-name qsrc0,debug-threads=on");
        Assert.IsFalse(source.Contains("-incoming"));
        StringAssert.EndsWith(string.Join(' ', destination), "-incoming defer");
    }

    [TestMethod]
    public async Task ARealQemuRunsTheGuest_AnswersQmp_CountsItsVcpuTime_AndQuitsOnDispose()
    {
        string qemu = QemuChild.Find(out string? whyNot) ?? throw new AssertInconclusiveException($"No QEMU to drive: {whyNot}.");
        string directory = Directory.CreateTempSubdirectory("modular-qemu-child-").FullName;
        try
        {
            int processId;
            await using (QemuChild child = await QemuChild.StartAsync(qemu, directory, "q0", "ab-guest.elf", 64UL << 20, incomingDefer: false))
            {
                processId = child.ProcessId;
                StringAssert.Matches(child.Version, new System.Text.RegularExpressions.Regex(@"^\d+\.\d+\.\d+$"), "the version comes from QEMU's QMP greeting");
                await child.WaitForSerialAsync('B', TimeSpan.FromMinutes(2));
                var clock = Stopwatch.StartNew();
                while (child.VcpuCpuTime == TimeSpan.Zero && clock.Elapsed < TimeSpan.FromSeconds(30))
                {
                    await Task.Delay(100);
                }

                Assert.IsTrue(child.VcpuCpuTime > TimeSpan.Zero, "the spinning guest's vCPU thread (CPU 0/KVM) has used CPU");
                Assert.IsTrue(child.CpuTime >= child.VcpuCpuTime);
                Assert.AreEqual("none", (await child.QueryMigrateAsync())["status"]?.GetValue<string>() ?? "none", "query-migrate before any migration");
            }

            Assert.IsFalse(Process.GetProcesses().Any(p => p.Id == processId && !p.HasExited), "QMP quit ended QEMU");
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    /// <summary>
    /// QEMU reads the files <see cref="TlsCredentialsWriter"/> writes as tls-creds-x509 objects for
    /// both ends, with its own checks of them (key usage, purposes, CA constraints, dates): what the
    /// bench's tls row and docs/tls.md rely on. A directory without the files is refused by the same
    /// command, so the loads are real.
    /// </summary>
    [TestMethod]
    public async Task ARealQemuLoadsTheTlsCredentialsModularWrites()
    {
        string qemu = QemuChild.Find(out string? whyNot) ?? throw new AssertInconclusiveException($"No QEMU to drive: {whyNot}.");
        string directory = Directory.CreateTempSubdirectory("modular-qemu-tls-").FullName;
        try
        {
            string pki = Path.Combine(directory, "pki");
            TlsCredentialsWriter.Write(pki, ["localhost", "127.0.0.1"], TimeSpan.FromDays(1));
            await using QemuChild child = await QemuChild.StartAsync(qemu, directory, "q0", "ab-guest.elf", 64UL << 20, incomingDefer: true);
            foreach (string endpoint in new[] { "server", "client" })
            {
                await child.Qmp.ExecuteAsync("object-add", new JsonObject
                {
                    ["qom-type"] = TlsCredentials.QomType,
                    ["id"] = "tls-" + endpoint,
                    ["dir"] = pki,
                    ["endpoint"] = endpoint,
                    ["verify-peer"] = true,
                });
            }

            string empty = Directory.CreateDirectory(Path.Combine(directory, "empty")).FullName;
            QmpErrorException refused = await Assert.ThrowsExactlyAsync<QmpErrorException>(() => child.Qmp.ExecuteAsync("object-add", new JsonObject
            {
                ["qom-type"] = TlsCredentials.QomType,
                ["id"] = "tls-empty",
                ["dir"] = empty,
                ["endpoint"] = "server",
            }));
            StringAssert.Contains(refused.Message, "ca-cert.pem", "QEMU names the file it could not read");
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }
}
