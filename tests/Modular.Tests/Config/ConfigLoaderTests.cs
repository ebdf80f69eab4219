using Modular.Core.Config;
using Modular.Tests.Support;

namespace Modular.Tests.Config;

[TestClass]
public sealed class ConfigLoaderTests : ConfigFileTestBase
{
    protected override string DirectoryPrefix => "config";

    [TestMethod]
    public void AFullConfigIsReadWithTypedValues()
    {
        string path = Write("""
            {
              // comments are allowed, as in appsettings.json
              "machine": { "accelerator": "kvm", "memory": "1G", "vcpus": 2, "kernel": "guests/ab.elf", "paused": true },
              "devices": [ { "type": "serial", "output": "file:/tmp/s.log" }, { "id": "exit", "type": "debug-exit", "iobase": "0xf4" } ],
              "migration": { "capabilities": { "postcopy-ram": true }, "parameters": { "downtime-limit": 50, "max-bandwidth": "1G" } },
              "plugins": { "directories": [ "extra" ] },
              "qmp": { "socket": "q.sock" },
            }
            """);

        ModularConfig config = ConfigLoader.Load(path);

        Assert.AreEqual(1UL << 30, config.Machine.MemoryBytes);
        Assert.AreEqual(2, config.Machine.Vcpus);
        Assert.IsTrue(config.Machine.Paused);
        Assert.AreEqual(Path.Combine(Dir, "guests/ab.elf"), config.Machine.Kernel);
        Assert.AreEqual(2, config.Devices.Count);
        Assert.AreEqual("serial0", config.Devices[0].Id);
        Assert.AreEqual("file:/tmp/s.log", config.Devices[0].Properties["output"]);
        Assert.AreEqual("exit", config.Devices[1].Id);
        Assert.AreEqual(0xf4UL, config.Devices[1].GetUInt64("iobase", 0));
        Assert.IsTrue(config.Migration.Capabilities["postcopy-ram"]);
        Assert.IsFalse(config.Migration.Capabilities["return-path"]);
        Assert.AreEqual(50, config.Migration.DowntimeLimitMs);
        Assert.AreEqual(1UL << 30, config.Migration.MaxBandwidth);
        CollectionAssert.AreEqual(new[] { Path.Combine(Dir, "extra") }, config.PluginDirectories.ToArray());
        Assert.AreEqual(Path.Combine(Dir, "q.sock"), config.QmpSocket);
    }

    [TestMethod]
    public void DefaultsApplyWithoutAFile()
    {
        ModularConfig config = ConfigLoader.Load(null);

        Assert.AreEqual("kvm", config.Machine.Accelerator);
        Assert.AreEqual(256UL << 20, config.Machine.MemoryBytes);
        Assert.AreEqual("serial", config.Devices.Single().Type);
        Assert.AreEqual(300, config.Migration.DowntimeLimitMs);
        Assert.AreEqual("userfaultfd", config.Migration.FaultBackend);
        Assert.IsNull(config.QmpSocket);
    }

    [TestMethod]
    public void MalformedJsonNamesLineAndColumn()
    {
        string path = Write("{\n  \"machine\": {\n    \"memory\": \"1G\"\n    \"vcpus\": 2\n  }\n}");

        ConfigException ex = Fails(path);

        StringAssert.StartsWith(ex.Message, $"{path}: malformed JSON at line 4, column 5:");
    }

    [TestMethod]
    public void UnknownKeysAreNamedWithTheNearestKnownKey()
    {
        string path = Write("""{ "machine": { "memroy": "1G" }, "qmpp": { "socket": "x" }, "migration": { "parameters": { "downtime": 3 } } }""");

        ConfigException ex = Fails(path);

        CollectionAssert.Contains(ex.Errors.ToList(), "machine.memroy: unknown key 'memroy' in machine; did you mean 'memory'?");
        CollectionAssert.Contains(ex.Errors.ToList(), "qmpp: unknown key 'qmpp' at the top level; did you mean 'qmp'?");
        CollectionAssert.Contains(ex.Errors.ToList(), "migration.parameters.downtime: unknown key 'downtime' in migration.parameters; did you mean 'downtime-limit'?");
        Assert.AreEqual(3, ex.Errors.Count);
    }

    [TestMethod]
    public void BadValuesNameTheJsonPathAndWhatWasExpected()
    {
        string path = Write("""{ "machine": { "memory": "lots", "vcpus": 0, "accelerator": "xen", "paused": "maybe" } }""");

        ConfigException ex = Fails(path);

        CollectionAssert.AreEquivalent(
            new[]
            {
                "machine.memory: expected a size like 256M or 1G (bytes, or a number with K, M, G or T), found 'lots'.",
                "machine.vcpus: expected a whole number from 1 to 64, found '0'.",
                "machine.accelerator: expected one of kvm, synthetic, found 'xen'.",
                "machine.paused: expected true or false, found 'maybe'.",
            },
            ex.Errors.ToList());
    }

    [TestMethod]
    public void LatencyThreadsDefaultToRealTime_TakeNiceOrOff_AndNameTheChoicesOtherwise()
    {
        Assert.AreEqual(Abstractions.Threading.LatencyThreadPolicy.RealTime, ConfigLoader.Load(Write("{}")).Migration.LatencyThreads);
        Assert.AreEqual(Abstractions.Threading.LatencyThreadPolicy.Nice, ConfigLoader.Load(Write("""{ "migration": { "latency-threads": "nice" } }""")).Migration.LatencyThreads);
        Assert.AreEqual(Abstractions.Threading.LatencyThreadPolicy.Off, ConfigLoader.Load(Write("""{ "migration": { "latency-threads": "off" } }""")).Migration.LatencyThreads);

        ConfigException ex = Fails(Write("""{ "migration": { "latency-threads": "fifo" } }"""));

        Assert.AreEqual("migration.latency-threads: expected one of realtime, nice, off, found 'fifo'.", ex.Errors.Single());
    }

    [TestMethod]
    public void MemoryMustBeAMultipleOfThePageSize()
    {
        ConfigException ex = Fails(Write("""{ "machine": { "memory": "1000000" } }"""));

        Assert.AreEqual("machine.memory: 1000000 bytes is not a multiple of the 4096-byte page size.", ex.Errors.Single());
    }

    [TestMethod]
    public void ObjectsWhereValuesBelongAreRefused()
    {
        ConfigException ex = Fails(Write("""{ "machine": { "memory": { "size": 1 } }, "qmp": "sock" }"""));

        CollectionAssert.Contains(ex.Errors.ToList(), "machine.memory: expected a size like 256M or 1G, found an object or list.");
        CollectionAssert.Contains(ex.Errors.ToList(), "qmp: expected an object, found 'sock'.");
    }

    [TestMethod]
    public void DevicesNeedATypeAndUniqueIds()
    {
        ConfigException ex = Fails(Write("""{ "devices": [ { "id": "a", "type": "serial" }, { "output": "stdio" }, { "id": "a", "type": "serial" } ] }"""));

        CollectionAssert.AreEquivalent(
            new[]
            {
                "devices[1].type: missing; every device needs a type, for example \"serial\" (modular plugins lists the device types available).",
                "devices[2].id: 'a' is already used by devices[0]; device ids must be unique.",
            },
            ex.Errors.ToList());
    }

    [TestMethod]
    public void CommandLineOverridesReplaceSingleKeys()
    {
        string path = Write("""{ "machine": { "memory": "256M" }, "devices": [ { "type": "serial", "output": "stdio" } ] }""");

        ModularConfig config = ConfigLoader.Load(path, [new("machine.memory", "2G"), new("devices[0].output", "null"), new("migration.capabilities.postcopy-ram", "true")]);

        Assert.AreEqual(2UL << 30, config.Machine.MemoryBytes);
        Assert.AreEqual("null", config.Devices[0].Properties["output"]);
        Assert.IsTrue(config.Migration.Capabilities["postcopy-ram"]);
    }

    [TestMethod]
    public void AnOverrideOfAnUnknownKeyIsRefused()
    {
        ConfigException ex = Fails(Write("{}"), new KeyValuePair<string, string>("machine.memori", "1G"));

        Assert.AreEqual("machine.memori: unknown key 'memori' in machine; did you mean 'memory'?", ex.Errors.Single());
    }

    [TestMethod]
    public void AMissingFileIsNamed()
    {
        string path = Path.Combine(Dir, "nope.json");

        ConfigException ex = Fails(path);

        StringAssert.StartsWith(ex.Message, $"Config file '{path}' cannot be read:");
    }

    [TestMethod]
    public void ATopLevelArrayIsRefused()
    {
        ConfigException ex = Fails(Write("[1, 2]"));

        StringAssert.Contains(ex.Message, "the top level must be a JSON object");
    }

    [TestMethod]
    public void SizesParseAndFormat()
    {
        Assert.IsTrue(ByteSize.TryParse("256M", out ulong m));
        Assert.AreEqual(256UL << 20, m);
        Assert.IsTrue(ByteSize.TryParse("3GiB", out ulong g));
        Assert.AreEqual(3UL << 30, g);
        Assert.IsTrue(ByteSize.TryParse("4096", out ulong b));
        Assert.AreEqual(4096UL, b);
        Assert.IsFalse(ByteSize.TryParse("1.5G", out _));
        Assert.IsFalse(ByteSize.TryParse("99999999999T", out _));
        Assert.AreEqual("1G", ByteSize.Format(1UL << 30));
        Assert.AreEqual("1536M", ByteSize.Format(1536UL << 20));
    }

    [TestMethod]
    public void DocsDescribeEveryKeyWithItsDefault()
    {
        string docs = File.ReadAllText(Path.Combine(TestPluginCompiler.RepoRoot, "docs", "config.md"));

        foreach (ConfigKey key in ConfigSchema.Keys.Where(k => k.Kind != ConfigValueKind.Section))
        {
            StringAssert.Contains(docs, $"| `{key.Path}` |", $"docs/config.md does not document {key.Path}");
            StringAssert.Contains(docs, $"| `{key.Path}` | {key.Default.Replace("|", "\\|", StringComparison.Ordinal)} |", $"docs/config.md gives another default for {key.Path}");
        }
    }
}
