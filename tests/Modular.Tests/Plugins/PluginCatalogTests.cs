using Modular.Core.Plugins;
using Modular.Tests.Support;

namespace Modular.Tests.Plugins;

[TestClass]
public sealed class PluginCatalogTests
{
    private string _root = null!;

    [TestInitialize]
    public void Setup() => _root = TestPluginCompiler.TempDirectory("plugins");

    [TestCleanup]
    public void Cleanup()
    {
        try { Directory.Delete(_root, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }

    private string Folder(string name) => Directory.CreateDirectory(Path.Combine(_root, name)).FullName;

    [TestMethod]
    public void LoadsATransportFromDiskAndSelectsItByScheme()
    {
        TestPluginCompiler.Compile(Folder("transport-alpha"), "Alpha.Transport", TestPluginCompiler.TransportSource("AlphaTransport", "alpha"));

        using PluginCatalog catalog = PluginCatalog.Load([_root]);

        Assert.AreEqual(0, catalog.Problems.Count, string.Join("\n", catalog.Problems));
        CollectionAssert.AreEqual(new[] { "alpha" }, catalog.Names(PluginKind.Transport).ToArray());
        var transport = catalog.GetTransport("alpha");
        Assert.AreEqual("AlphaTransport", transport.GetType().Name);
        // The contract type is shared with the host: the plugin's object implements the host's interface.
        Assert.IsInstanceOfType<Modular.Abstractions.Transports.IMigrationTransport>(transport);
        PluginPartInfo info = catalog.Describe().Single();
        Assert.AreEqual("transport-alpha", info.Plugin);
        Assert.IsTrue(info.IsUsable);
        Assert.IsTrue(info.AssemblyPath.EndsWith("Alpha.Transport.dll", StringComparison.Ordinal));
    }

    [TestMethod]
    public void AFolderWithoutAssembliesIsReported()
    {
        string folder = Folder("empty-plugin");
        File.WriteAllText(Path.Combine(folder, "README.txt"), "nothing here");

        using PluginCatalog catalog = PluginCatalog.Load([_root]);

        PluginLoadProblem problem = catalog.Problems.Single();
        StringAssert.Contains(problem.Message, $"Plugin folder '{folder}' holds no assembly (.dll)");
    }

    [TestMethod]
    public void AFolderWithNoLoadableAssemblyIsReported()
    {
        string folder = Folder("broken-plugin");
        File.WriteAllBytes(Path.Combine(folder, "Broken.dll"), [0x4d, 0x5a, 1, 2, 3, 4]);

        using PluginCatalog catalog = PluginCatalog.Load([_root]);

        string message = catalog.Problems.Single().Message;
        StringAssert.Contains(message, $"Plugin folder '{folder}' has no loadable plugin assembly");
        StringAssert.Contains(message, "Broken.dll: not a valid assembly");
    }

    [TestMethod]
    public void AnAssemblyThatExportsNothingIsReportedWithTheContractCopyHint()
    {
        TestPluginCompiler.Compile(Folder("silent"), "Silent.Plugin", """
            public sealed class NotAPart : Modular.Abstractions.Plugins.IProbePlugin
            {
                public Modular.Abstractions.Plugins.PluginAvailability Probe() => Modular.Abstractions.Plugins.PluginAvailability.Usable;
            }
            """);

        using PluginCatalog catalog = PluginCatalog.Load([_root]);

        string message = catalog.Problems.Single().Message;
        StringAssert.Contains(message, "Plugin 'silent'");
        StringAssert.Contains(message, "loaded but exports no transport, device model or fault backend");
        StringAssert.Contains(message, "may carry its own copy of Modular.Abstractions");
    }

    [TestMethod]
    public void APluginFolderCarryingItsOwnContractSaysSo()
    {
        string folder = Folder("own-contract");
        TestPluginCompiler.Compile(folder, "Own.Plugin", "public sealed class Nothing { public Modular.Abstractions.Plugins.PluginAvailability? A; }");
        File.Copy(TestPluginCompiler.ContractPath, Path.Combine(folder, "Modular.Abstractions.dll"));

        using PluginCatalog catalog = PluginCatalog.Load([_root]);

        StringAssert.Contains(catalog.Problems.Single().Message, "Its folder carries its own copy of Modular.Abstractions.dll");
    }

    [TestMethod]
    public void TwoPluginsClaimingOneSchemeAreReportedAndTheSchemeRefused()
    {
        TestPluginCompiler.Compile(Folder("dup-one"), "Dup.One", TestPluginCompiler.TransportSource("DupOne", "dup"));
        TestPluginCompiler.Compile(Folder("dup-two"), "Dup.Two", TestPluginCompiler.TransportSource("DupTwo", "dup"));
        TestPluginCompiler.Compile(Folder("fine"), "Fine.Transport", TestPluginCompiler.TransportSource("Fine", "fine"));

        using PluginCatalog catalog = PluginCatalog.Load([_root]);

        string problem = catalog.Problems.Single().Message;
        StringAssert.Contains(problem, "Several plugins claim the transport 'dup': 'dup-one'");
        StringAssert.Contains(problem, "and 'dup-two'");
        var ex = Assert.ThrowsExactly<PluginException>(() => catalog.GetTransport("dup"));
        StringAssert.Contains(ex.Message, "Remove all but one of them.");
        Assert.IsNotNull(catalog.GetTransport("fine"));
    }

    [TestMethod]
    public void AskingForAMissingPluginListsWhatIsAvailable()
    {
        TestPluginCompiler.Compile(Folder("a"), "A.Transport", TestPluginCompiler.TransportSource("A", "aaa"));
        TestPluginCompiler.Compile(Folder("b"), "B.Transport", TestPluginCompiler.TransportSource("B", "bbb"));

        using PluginCatalog catalog = PluginCatalog.Load([_root]);

        var ex = Assert.ThrowsExactly<PluginException>(() => catalog.GetTransport("rdma"));
        StringAssert.StartsWith(ex.Message, "No plugin offers the URI scheme 'rdma'. Available: aaa, bbb.");
        var dev = Assert.ThrowsExactly<PluginException>(() => catalog.GetDeviceModel("virtio-net"));
        StringAssert.StartsWith(dev.Message, "No plugin offers the device type 'virtio-net'. Available: none.");
    }

    [TestMethod]
    public void APluginWhoseConstructorThrowsIsNamedAndTheOthersStayUsable()
    {
        TestPluginCompiler.Compile(Folder("boom"), "Boom.Transport", TestPluginCompiler.TransportSource("Boom", "boom", throwInConstructor: true));
        TestPluginCompiler.Compile(Folder("calm"), "Calm.Transport", TestPluginCompiler.TransportSource("Calm", "calm"));

        using PluginCatalog catalog = PluginCatalog.Load([_root]);

        var ex = Assert.ThrowsExactly<PluginException>(() => catalog.GetTransport("boom"));
        StringAssert.Contains(ex.Message, "Plugin 'boom' (");
        StringAssert.Contains(ex.Message, "failed to create its transport 'boom': the frobnicator is missing");
        Assert.AreEqual("Calm", catalog.GetTransport("calm").GetType().Name);
        PluginPartInfo boom = catalog.Describe().Single(p => p.Name == "boom");
        Assert.IsFalse(boom.IsUsable);
        Assert.AreEqual("the frobnicator is missing", boom.Reason);
    }

    [TestMethod]
    public void APluginBuiltAgainstAnIncompatibleContractIsRefusedNamingBothVersions()
    {
        string fakeContractDir = Path.Combine(_root, "..", "fake-contract-" + Guid.NewGuid().ToString("N")[..6]);
        string fake = TestPluginCompiler.CompileFakeContract(fakeContractDir, "2.0.0.0");
        TestPluginCompiler.Compile(Folder("future"), "Future.Plugin", "public sealed class P { public Modular.Abstractions.Plugins.Marker? M; }", contractPath: fake);

        using PluginCatalog catalog = PluginCatalog.Load([_root]);

        string message = catalog.Problems.Single().Message;
        StringAssert.Contains(message, "Plugin 'future'");
        StringAssert.Contains(message, "was built against Modular.Abstractions 2.0.0, but this host provides 1.0.0");
        StringAssert.Contains(message, "Rebuild the plugin against this version of Modular.");
        Directory.Delete(fakeContractDir, true);
    }

    [TestMethod]
    public void NotUsableProbeIsShownWithItsReason()
    {
        TestPluginCompiler.Compile(Folder("rdmaish"), "Rdmaish", TestPluginCompiler.TransportSource("R", "rdmaish", notUsableReason: "no RDMA device found"));

        using PluginCatalog catalog = PluginCatalog.Load([_root]);

        PluginPartInfo part = catalog.Describe().Single();
        Assert.IsFalse(part.IsUsable);
        Assert.AreEqual("no RDMA device found", part.Reason);
    }

    [TestMethod]
    public void AMissingDirectoryIsReportedNotThrown()
    {
        string missing = Path.Combine(_root, "does-not-exist");

        using PluginCatalog catalog = PluginCatalog.Load([missing]);

        StringAssert.StartsWith(catalog.Problems.Single().Message, $"Plugin directory '{missing}' does not exist.");
    }

    [TestMethod]
    public void ADirectoryThatIsItselfAPluginFolderLoads()
    {
        TestPluginCompiler.Compile(_root, "Flat.Transport", TestPluginCompiler.TransportSource("Flat", "flat"));

        using PluginCatalog catalog = PluginCatalog.Load([_root]);

        Assert.AreEqual("Flat", catalog.GetTransport("flat").GetType().Name);
    }
}
