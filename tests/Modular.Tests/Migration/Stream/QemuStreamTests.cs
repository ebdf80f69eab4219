using System.IO.Pipelines;
using Modular.Core.Migration.Stream;
using Modular.Tests.Support;

namespace Modular.Tests.Migration.Stream;

/// <summary>
/// Modular's codec against bytes a real QEMU wrote (<see cref="QemuSnapshot"/>, QEMU 7.2): the
/// header, the configuration section, section headers and footers, and every record of the RAM
/// section (MEM_SIZE with QEMU's block list, PAGE, ZERO, CONTINUE, EOS) are read by the same code the
/// destination uses, up to QEMU's first device section, whose contents only QEMU's devices know.
/// </summary>
[TestClass]
public sealed class QemuStreamTests
{
    [TestMethod]
    public async Task ModularsReaderReadsQemusHeaderConfigurationAndEveryRamRecord()
    {
        QemuSnapshot.Snapshot snapshot = await QemuSnapshot.GetAsync();
        await using FileStream file = File.OpenRead(snapshot.Path);
        var reader = new MigrationStreamReader(PipeReader.Create(file));

        StreamHeader header = await StreamHeader.ReadFromAsync(reader);
        Assert.AreEqual(StreamHeader.Current, header);
        string? machineType = null;
        RamBlockList? blocks = null;
        uint? ramSection = null;
        long pages = 0, zeroPages = 0, ramParts = 0;
        SectionHeader? firstDevice = null;
        while (firstDevice is null)
        {
            SectionType type = await reader.ReadSectionTypeAsync();
            switch (type)
            {
                case SectionType.Configuration:
                    machineType = (await ConfigurationSection.ReadFromAsync(reader)).MachineType;
                    continue;
                case SectionType.Start or SectionType.Part or SectionType.End or SectionType.Full:
                    SectionHeader section = await SectionHeader.ReadFromAsync(reader, type);
                    if (type == SectionType.Start && section.IdString == "ram")
                    {
                        Assert.AreEqual(StreamFormat.RamSectionVersion, section.VersionId, "QEMU's RAM section version");
                        ramSection = section.SectionId;
                    }
                    else if (section.SectionId != ramSection)
                    {
                        Assert.AreEqual(SectionType.Full, type, $"after RAM, QEMU's devices come whole; got {type} for section {section.SectionId}");
                        firstDevice = section;
                        continue;
                    }

                    ramParts++;
                    while (true)
                    {
                        RamRecordHeader record = await reader.ReadRamRecordHeaderAsync();
                        if (record.Kind == RamRecordFlags.Eos)
                        {
                            break;
                        }

                        switch (record.Kind)
                        {
                            case RamRecordFlags.MemSize:
                                blocks = await RamBlockList.ReadFromAsync(reader, record.Offset);
                                break;
                            case RamRecordFlags.Page:
                                _ = await reader.ReadRamPageAsync();
                                pages++;
                                break;
                            case RamRecordFlags.Zero:
                                await reader.ReadRamZeroFillAsync();
                                zeroPages++;
                                break;
                            default:
                                Assert.Fail($"RAM record {record.Kind} in QEMU's stream");
                                break;
                        }
                    }

                    _ = await SectionFooter.ReadFromAsync(reader, section.SectionId, "ram");
                    continue;
                default:
                    Assert.Fail($"record {type} before QEMU's first device section");
                    break;
            }
        }

        StringAssert.StartsWith(machineType, "pc-i440fx-", $"QEMU {snapshot.Version}'s machine type");
        Assert.IsNotNull(blocks, "QEMU's RAM section starts with MEM_SIZE");
        Assert.AreEqual(QemuSnapshot.Memory, blocks.Blocks.Single(b => b.Id == "pc.ram").Length);
        CollectionAssert.IsSubsetOf(new[] { "pc.ram", "pc.bios", "pc.rom" }, blocks.Blocks.Select(b => b.Id).ToArray());
        Assert.AreEqual(blocks.TotalLength, blocks.Blocks.Aggregate(0UL, (sum, b) => sum + b.Length));
        Assert.IsTrue(ramParts >= 2, "a START and at least an END");
        Assert.AreEqual(snapshot.NormalPages, pages, "PAGE records: QEMU's ram.normal");
        Assert.AreEqual(snapshot.DuplicatePages, zeroPages, "ZERO records: QEMU's ram.duplicate");
        Assert.IsFalse(string.IsNullOrEmpty(firstDevice.Value.IdString), "the first device section's header names it");
    }

    [TestMethod]
    public async Task AModularDestinationGivenQemusStream_FailsAtTheConfigurationNamingBothMachines()
    {
        // Modular's machine is not QEMU's pc: the destination must say so at the first record that
        // differs, not fail somewhere in QEMU's devices (or load a part of them).
        QemuSnapshot.Snapshot snapshot = await QemuSnapshot.GetAsync();

        CliProcess.Result result = CliProcess.Run(TimeSpan.FromMinutes(1),
            "run", "--set", "machine.accelerator=synthetic", "--memory", $"{QemuSnapshot.Memory >> 20}M", "--serial", "null",
            "--incoming", "file:" + snapshot.Path);

        Assert.AreEqual(1, result.ExitCode, result.StdErr);
        StringAssert.Contains(result.StdErr, "modular: Incoming migration failed: Migration stream error at byte 8: CONFIGURATION: machine type 'pc-i440fx-");
        StringAssert.Contains(result.StdErr, "does not match this machine's 'modular-");
    }
}
