using Modular.Tests.Support;

namespace Modular.Tests.Cli;

/// <summary><c>modular bench</c>'s option checks (the benchmark itself is run by hand, never as a timed test).</summary>
[TestClass]
public sealed class BenchCommandTests
{
    [TestMethod]
    public void UnknownTransport_IsAUsageError()
    {
        CliProcess.Result result = CliProcess.Run("bench", "--transports", "tcp,rdma");
        Assert.AreEqual(2, result.ExitCode, result.StdErr);
        StringAssert.Contains(result.StdErr, "--transports 'tcp,rdma': the benchmark measures tcp and unix; give one or both, comma-separated.");
    }

    [TestMethod]
    public void TinyMemory_IsAUsageError()
    {
        CliProcess.Result result = CliProcess.Run("bench", "--memory", "1K");
        Assert.AreEqual(2, result.ExitCode, result.StdErr);
        StringAssert.Contains(result.StdErr, "--memory '1K': expected a size above 1M such as 256M or 1G.");
    }

    [TestMethod]
    public void ASettingWithoutAValue_IsAUsageError()
    {
        CliProcess.Result result = CliProcess.Run("bench", "--set", "machine.memory-backend");
        Assert.AreEqual(2, result.ExitCode, result.StdErr);
        StringAssert.Contains(result.StdErr, "--set 'machine.memory-backend': expected KEY=VALUE");
    }
}
