using System.Diagnostics;
using System.Text.Json;
using Modular.Core.Migration.Stream;
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
            string script = Path.Combine(AppContext.BaseDirectory, "Migration", "Stream", "stream_walk.py");
            var start = new ProcessStartInfo(python!, [script, file]) { RedirectStandardOutput = true, RedirectStandardError = true };
            using Process process = Process.Start(start)!;
            string output = await process.StandardOutput.ReadToEndAsync();
            string error = await process.StandardError.ReadToEndAsync();
            await process.WaitForExitAsync();
            Assert.AreEqual(0, process.ExitCode, error);

            using JsonDocument summary = JsonDocument.Parse(output);
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

    private static string? FindPython() =>
        (Environment.GetEnvironmentVariable("PATH") ?? string.Empty).Split(':')
            .Select(dir => Path.Combine(dir, "python3"))
            .FirstOrDefault(File.Exists);
}
