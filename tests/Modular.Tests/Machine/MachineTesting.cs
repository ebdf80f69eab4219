using System.Diagnostics;
using Modular.Abstractions.Memory;
using Modular.Core.Config;
using Modular.Core.Machine;
using Modular.Core.Plugins;
using Modular.Core.Verification;

namespace Modular.Tests.Machine;

/// <summary>Builds real machines from configs for the machine tests, and reads what their guests leave.</summary>
internal static class MachineTesting
{
    /// <summary>Where the A/B guest and the fill guest write their first page.</summary>
    internal static readonly GuestPhysicalAddress OneMiB = new(1UL << 20);

    /// <summary>A test guest built beside the tests (guests/NAME).</summary>
    internal static string GuestPath(string name) => Path.Combine(AppContext.BaseDirectory, "guests", name);

    /// <summary>Ends the test as inconclusive when this host has no /dev/kvm.</summary>
    internal static void RequireKvm()
    {
        if (!File.Exists("/dev/kvm"))
        {
            Assert.Inconclusive("/dev/kvm does not exist on this host: the KVM machine tests need it.");
        }
    }

    /// <summary>The shipped plugins (the devices plugin among them).</summary>
    internal static PluginCatalog LoadPlugins() => PluginCatalog.Load([PluginCatalog.DefaultDirectory]);

    /// <summary>
    /// A config from the defaults with <paramref name="kernel"/>, <paramref name="memory"/>, a serial
    /// port writing to <paramref name="serialFile"/>, a debug-exit port, and <paramref name="extra"/> overrides.
    /// </summary>
    internal static ModularConfig ConfigFor(string? kernel, string memory, string serialFile, params (string Key, string Value)[] extra)
    {
        var overrides = new List<KeyValuePair<string, string>>
        {
            new("machine.memory", memory),
            new("devices[0].type", "serial"),
            new("devices[0].output", "file:" + serialFile),
            new("devices[1].type", "debug-exit"),
        };
        if (kernel is not null)
        {
            overrides.Add(new("machine.kernel", kernel));
        }

        overrides.AddRange(extra.Select(e => new KeyValuePair<string, string>(e.Key, e.Value)));
        return ConfigLoader.Load(null, overrides);
    }

    /// <summary>The serial output written to <paramref name="file"/> so far (empty while it does not exist).</summary>
    internal static string ReadSerial(string file)
    {
        try
        {
            using var stream = new FileStream(file, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            using var reader = new StreamReader(stream, System.Text.Encoding.Latin1);
            return reader.ReadToEnd();
        }
        catch (FileNotFoundException)
        {
            return string.Empty;
        }
    }

    /// <summary>Waits until <paramref name="condition"/> holds; fails with <paramref name="what"/> and the detail after <paramref name="timeout"/>.</summary>
    internal static void WaitUntil(Func<bool> condition, TimeSpan timeout, Func<string> what)
    {
        var clock = Stopwatch.StartNew();
        while (!condition())
        {
            if (clock.Elapsed > timeout)
            {
                Assert.Fail($"Waited {timeout.TotalSeconds:0.#} s in vain for {what()}.");
            }

            Thread.Sleep(20);
        }
    }

    /// <summary>Waits until the serial file holds the A/B guest's 'A' and at least <paramref name="bs"/> 'B's.</summary>
    internal static string WaitForBs(string serialFile, int bs, TimeSpan timeout)
    {
        string output = string.Empty;
        WaitUntil(
            () => (output = ReadSerial(serialFile)).StartsWith('A') && output.Count(c => c == 'B') >= bs,
            timeout,
            () => $"'A' and {bs} 'B'(s) in {serialFile}; it holds '{output}'");
        return output;
    }

    /// <summary>The A/B check over the machine's RAM layout; fails the test with the checker's sentence.</summary>
    internal static AbRamCheckResult AssertAbRam(VirtualMachine machine)
    {
        AbRamCheckResult result = AbRamCheck.Check(machine.Memory, machine.RamLayout);
        Assert.IsTrue(result.Passed, result.Message);
        return result;
    }

    /// <summary>The first byte of the page at 1 MiB (the A/B guest's pass counter, mod 256).</summary>
    internal static byte ByteAt1MiB(VirtualMachine machine)
    {
        Span<byte> one = stackalloc byte[1];
        machine.Memory.Read(OneMiB, one);
        return one[0];
    }

    /// <summary>The number of open file descriptors of this process.</summary>
    internal static int OpenFdCount() => Directory.GetFileSystemEntries("/proc/self/fd").Length;

    /// <summary>The names of this process's threads (from /proc/self/task/*/comm).</summary>
    internal static List<string> ThreadNames()
    {
        var names = new List<string>();
        foreach (string task in Directory.GetDirectories("/proc/self/task"))
        {
            try
            {
                names.Add(File.ReadAllText(Path.Combine(task, "comm")).Trim());
            }
            catch (IOException)
            {
                // the thread ended while we looked
            }
        }

        return names;
    }
}
