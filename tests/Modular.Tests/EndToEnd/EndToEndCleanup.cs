using Modular.Tests.Support;

namespace Modular.Tests.EndToEnd;

/// <summary>Kills any modular process a failed test could not quit, when the test run ends.</summary>
[TestClass]
public static class EndToEndCleanup
{
    [AssemblyCleanup]
    public static void KillLeftovers() => ModularProcess.KillAll();
}
