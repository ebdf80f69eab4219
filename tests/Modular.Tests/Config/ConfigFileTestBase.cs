using Modular.Core.Config;
using Modular.Tests.Support;

namespace Modular.Tests.Config;

/// <summary>A fresh directory per test and a config file written into it: what the config tests share.</summary>
public abstract class ConfigFileTestBase
{
    /// <summary>The test's directory; the config file goes here, and relative paths in it resolve here.</summary>
    protected string Dir { get; private set; } = null!;

    /// <summary>The prefix of the test's directory name.</summary>
    protected abstract string DirectoryPrefix { get; }

    [TestInitialize]
    public void CreateDirectory() => Dir = TestPluginCompiler.TempDirectory(DirectoryPrefix);

    [TestCleanup]
    public void DeleteDirectory() => Directory.Delete(Dir, recursive: true);

    /// <summary>Writes <paramref name="json"/> as vm.json in <see cref="Dir"/>; returns its path.</summary>
    protected string Write(string json)
    {
        string path = Path.Combine(Dir, "vm.json");
        File.WriteAllText(path, json);
        return path;
    }

    /// <summary>Loads <paramref name="path"/> with the overrides, expecting the config to be refused.</summary>
    protected static ConfigException Fails(string path, params KeyValuePair<string, string>[] overrides) =>
        Assert.ThrowsExactly<ConfigException>(() => ConfigLoader.Load(path, overrides));
}
