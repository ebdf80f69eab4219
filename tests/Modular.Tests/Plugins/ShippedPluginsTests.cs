using Modular.Core.Plugins;

namespace Modular.Tests.Plugins;

/// <summary>The plugins this repository ships, as the build lays them out beside the tests.</summary>
[TestClass]
public sealed class ShippedPluginsTests
{
    [TestMethod]
    public void EveryShippedPluginFolderHoldsOnlyItsOwnAssemblies()
    {
        string[] folders = Directory.GetDirectories(PluginCatalog.DefaultDirectory);

        Assert.IsTrue(folders.Length > 0, "the build put no plugin folder beside the tests");
        foreach (string folder in folders)
        {
            string[] files = Directory.GetFiles(folder).Select(Path.GetFileName).ToArray()!;
            Assert.IsFalse(files.Contains("Modular.Abstractions.dll"), $"{folder} carries its own Modular.Abstractions.dll");
            Assert.IsFalse(files.Any(f => f.StartsWith("System.Composition", StringComparison.Ordinal)), $"{folder} carries System.Composition: {string.Join(", ", files)}");
        }
    }

    [TestMethod]
    public void ShippedPluginsLoadWithoutProblems()
    {
        using PluginCatalog catalog = PluginCatalog.Load([PluginCatalog.DefaultDirectory]);

        Assert.AreEqual(0, catalog.Problems.Count, string.Join(Environment.NewLine, catalog.Problems));
        CollectionAssert.IsSubsetOf(new[] { "debug-exit", "dma-ring", "serial" }, catalog.Names(PluginKind.Device).ToArray());
        foreach (PluginPartInfo part in catalog.Describe().Where(p => p.Kind == PluginKind.Device))
        {
            Assert.IsTrue(part.IsUsable, $"{part.Name}: {part.Reason}");
        }
    }
}
