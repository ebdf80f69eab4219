using System.Diagnostics;
using System.Text.Json;
using Modular.Core.Memory;
using Modular.Core.Migration.Stream;
using Modular.Tests.Support;
using static Modular.Tests.Migration.Stream.StreamTestPipes;

namespace Modular.Tests.Migration.Stream;

/// <summary>
/// Runs stream_walk.py, a reader that follows QEMU's analyze-migration.py walk (docs/protocol.md), over
/// a file written by the codec.
/// </summary>
[TestClass]
public sealed class AnalyzeWalkTests
{
    private const string Description =
        "{\"page_size\":4096,\"devices\":[{\"name\":\"serial\",\"instance_id\":0,\"vmsd_name\":\"serial\",\"version\":1," +
        "\"fields\":[{\"name\":\"data\",\"type\":\"uint32\",\"size\":4}]," +
        "\"subsections\":[{\"vmsd_name\":\"serial/fifo\",\"version\":1,\"fields\":[{\"name\":\"fifo\",\"type\":\"uint8\",\"size\":1}]}]}]}";

    [TestMethod]
    public async Task AnalyzeStyleWalkReadsTheCodecsStream()
    {
        string? python = FindPython();
        if (python is null)
        {
            Assert.Inconclusive("python3 is not installed; the analyze-migration style walk cannot run.");
        }

        byte[] stream = Write(w =>
        {
            StreamHeader.Current.WriteTo(w);
            new ConfigurationSection("modular-1").WriteTo(w);
            SectionHeader.Start(0, "ram", 0, StreamFormat.RamSectionVersion).WriteTo(w);
            new RamBlockList([new RamBlockEntry("pc.ram", 0x40000), new RamBlockEntry("vga.vram", 0x10000)]).WriteTo(w);
            w.WriteRamEos();
            new SectionFooter(0).WriteTo(w);
            for (int part = 0; part < 2; part++)
            {
                SectionHeader.Part(0).WriteTo(w);
                for (int i = 0; i < 8; i++)
                {
                    byte[] page = new byte[4096];
                    page[0] = (byte)(part * 8 + i + 1);
                    w.WriteRamPage("pc.ram", (ulong)(part * 8 + i) * 4096, page);
                }

                w.WriteRamZeroPage("vga.vram", 0x1000);
                w.WriteRamEos();
                new SectionFooter(0).WriteTo(w);
            }

            SectionHeader.End(0).WriteTo(w);
            w.WriteRamEos();
            new SectionFooter(0).WriteTo(w);
            SectionHeader.Full(1, "serial", 0, 1).WriteTo(w);
            w.WriteBe32(0xdeadbeef);
            new SubsectionHeader("serial/fifo", 1).WriteTo(w);
            w.WriteU8(7);
            new SectionFooter(1).WriteTo(w);
            w.WriteEof();
            new VmDescription(Description).WriteTo(w);
        });

        string file = Path.Combine(Path.GetTempPath(), $"modular-walk-{Environment.ProcessId}.mig");
        await File.WriteAllBytesAsync(file, stream);
        try
        {
            using JsonDocument summary = await WalkAsync(python!, file);
            JsonElement root = summary.RootElement;
            Assert.AreEqual("modular-1", root.GetProperty("configuration").GetString());
            JsonElement ram = root.GetProperty("sections").GetProperty("ram (0)");
            Assert.AreEqual(16, ram.GetProperty("pages").GetInt32());
            Assert.AreEqual(2, ram.GetProperty("zero_pages").GetInt32());
            Assert.AreEqual(0x40000, ram.GetProperty("blocks").GetProperty("pc.ram").GetInt64());
            CollectionAssert.AreEqual(Enumerable.Range(1, 16).ToArray(), ram.GetProperty("first_bytes").EnumerateArray().Select(e => e.GetInt32()).ToArray());
            JsonElement serial = root.GetProperty("sections").GetProperty("serial (1)");
            Assert.AreEqual(0xdeadbeefL, serial.GetProperty("data").GetInt64());
            Assert.AreEqual(7, serial.GetProperty("serial/fifo").GetProperty("fifo").GetInt32());
        }
        finally
        {
            File.Delete(file);
        }
    }

    [TestMethod]
    public async Task AnalyzeStyleWalkReadsARealQemuStream_PageForPage()
    {
        // The walk itself checked against QEMU: a stream QEMU 7.2 wrote (its whole pc machine:
        // nested structs, arrays, optional subsections), walked to the end, with the very page
        // counts QEMU reported for it.
        string python = FindPython() ?? throw new AssertInconclusiveException("python3 is not installed; the analyze-migration style walk cannot run.");
        QemuSnapshot.Snapshot snapshot = await QemuSnapshot.GetAsync();

        using JsonDocument summary = await WalkAsync(python, snapshot.Path);

        JsonElement root = summary.RootElement;
        StringAssert.StartsWith(root.GetProperty("configuration").GetString(), "pc-i440fx-");
        JsonProperty[] sections = root.GetProperty("sections").EnumerateObject().ToArray();
        JsonElement ram = sections.Single(s => s.Name.StartsWith("ram (", StringComparison.Ordinal)).Value;
        Assert.AreEqual((long)QemuSnapshot.Memory, ram.GetProperty("blocks").GetProperty("pc.ram").GetInt64());
        Assert.AreEqual(snapshot.NormalPages, ram.GetProperty("pages").GetInt64(), "pages QEMU sent whole");
        Assert.AreEqual(snapshot.DuplicatePages, ram.GetProperty("zero_pages").GetInt64(), "zero pages QEMU sent");
        foreach (string device in new[] { "cpu (", "apic (", "serial (", "mc146818rtc (" })
        {
            Assert.IsTrue(sections.Any(s => s.Name.StartsWith(device, StringComparison.Ordinal)), $"QEMU's {device.TrimEnd('(', ' ')} section was walked");
        }
    }

    [TestMethod]
    public async Task AnalyzeStyleWalkReadsARealModularStream()
    {
        // A stream the engine wrote (a real precopy of a machine with a serial port), through the
        // same walk that reads QEMU's.
        string python = FindPython() ?? throw new AssertInconclusiveException("python3 is not installed; the analyze-migration style walk cannot run.");
        string file = Path.Combine(Path.GetTempPath(), $"modular-walk-real-{Environment.ProcessId}.mig");
        await File.WriteAllBytesAsync(file, await Engine.RealStream.GetAsync());
        try
        {
            using JsonDocument summary = await WalkAsync(python, file);

            JsonProperty[] sections = summary.RootElement.GetProperty("sections").EnumerateObject().ToArray();
            JsonElement ram = sections.Single(s => s.Name.StartsWith("ram (", StringComparison.Ordinal)).Value;
            Assert.AreEqual((long)Engine.RealStream.Memory, ram.GetProperty("blocks").GetProperty(GuestRam.MainBlockName).GetInt64());
            Assert.IsTrue(ram.GetProperty("pages").GetInt64() + ram.GetProperty("zero_pages").GetInt64() >= (long)(Engine.RealStream.Memory / 4096), "every page went out at least once");
            Assert.IsTrue(sections.Any(s => s.Name.StartsWith("serial (", StringComparison.Ordinal)), string.Join(", ", sections.Select(s => s.Name)));
        }
        finally
        {
            File.Delete(file);
        }
    }

    /// <summary>Runs stream_walk.py over <paramref name="file"/> and returns its JSON summary (asserting it succeeded).</summary>
    private static async Task<JsonDocument> WalkAsync(string python, string file)
    {
        string script = Path.Combine(AppContext.BaseDirectory, "Migration", "Stream", "stream_walk.py");
        var start = new ProcessStartInfo(python, [script, file]) { RedirectStandardOutput = true, RedirectStandardError = true };
        using Process process = Process.Start(start)!;
        Task<string> output = process.StandardOutput.ReadToEndAsync();
        string error = await process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        Assert.AreEqual(0, process.ExitCode, error);
        return JsonDocument.Parse(await output);
    }

    private static string? FindPython() =>
        (Environment.GetEnvironmentVariable("PATH") ?? string.Empty).Split(':')
            .Select(dir => Path.Combine(dir, "python3"))
            .FirstOrDefault(File.Exists);
}
