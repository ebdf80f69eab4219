using Modular.Core.Plugins;
using Modular.Tests.Support;

namespace Modular.Tests.Machine;

/// <summary>
/// What every in-process machine test shares: one plugin catalog for the whole run (loading it is
/// the slow part), a fresh temporary directory per test, and the patience for a slow nested KVM.
/// </summary>
public abstract class MachineTestBase
{
    private static readonly Lazy<PluginCatalog> SharedPlugins = new(MachineTesting.LoadPlugins);

    /// <summary>How long a test waits for the guest to show progress.</summary>
    protected static TimeSpan Patience { get; } = TimeSpan.FromSeconds(30);

    /// <summary>The shipped plugins, loaded once.</summary>
    protected static PluginCatalog Plugins => SharedPlugins.Value;

    /// <summary>This test's temporary directory.</summary>
    protected string Dir { get; private set; } = string.Empty;

    /// <summary>Creates <see cref="Dir"/>.</summary>
    [TestInitialize]
    public void CreateDirectory() => Dir = TestPluginCompiler.TempDirectory(GetType().Name);

    /// <summary>Deletes <see cref="Dir"/>.</summary>
    [TestCleanup]
    public void DeleteDirectory() => Directory.Delete(Dir, recursive: true);
}
