using Modular.Abstractions.Devices;
using Modular.Core.Machine;
using Modular.Core.Memory;

namespace Modular.Tests.Machine;

/// <summary>
/// A stopped machine's complete state held in memory: every savevm section (device and vCPU) as
/// bytes, and every RAM block copied out. The in-process stand-in for a migration stream.
/// </summary>
internal sealed class MachineSnapshot
{
    private const int ChunkSize = 1 << 20;

    private MachineSnapshot(List<SavedSection> sections, Dictionary<string, byte[]> ram)
    {
        Sections = sections;
        Ram = ram;
    }

    internal sealed record SavedSection(string IdString, uint InstanceId, uint Version, byte[] Data)
    {
        internal string Name => $"{IdString}/{InstanceId}";
    }

    internal IReadOnlyList<SavedSection> Sections { get; }

    internal IReadOnlyDictionary<string, byte[]> Ram { get; }

    /// <summary>Saves <paramref name="machine"/> (stopped) section by section, then its RAM block by block.</summary>
    internal static MachineSnapshot Take(VirtualMachine machine)
    {
        var sections = new List<SavedSection>();
        foreach (ISaveVmSection section in machine.StateSections())
        {
            var writer = new SaveVmWriter();
            section.Save(writer);
            sections.Add(new SavedSection(section.IdString, section.InstanceId, section.Version, writer.ToArray()));
        }

        var ram = new Dictionary<string, byte[]>(StringComparer.Ordinal);
        foreach (RamBlock block in machine.Ram.Blocks)
        {
            byte[] copy = new byte[checked((int)block.Size)];
            for (ulong offset = 0; offset < block.Size; offset += ChunkSize)
            {
                int length = (int)Math.Min(ChunkSize, block.Size - offset);
                block.CopyOut(offset, copy.AsSpan((int)offset, length));
            }

            ram[block.Name] = copy;
        }

        return new MachineSnapshot(sections, ram);
    }

    /// <summary>
    /// Restores into <paramref name="machine"/> (created for an incoming migration): RAM first, then
    /// every section into the section with the same id string and instance id, checking the version
    /// range the way the incoming side of a migration does.
    /// </summary>
    internal void RestoreInto(VirtualMachine machine)
    {
        foreach ((string name, byte[] bytes) in Ram)
        {
            RamBlock block = machine.Ram.GetBlock(name);
            Assert.AreEqual((ulong)bytes.Length, block.Size, $"RAM block {name} has another size on the destination.");
            for (ulong offset = 0; offset < block.Size; offset += ChunkSize)
            {
                int length = (int)Math.Min(ChunkSize, block.Size - offset);
                block.CopyIn(offset, bytes.AsSpan((int)offset, length));
            }
        }

        var targets = machine.StateSections().ToDictionary(s => $"{s.IdString}/{s.InstanceId}", StringComparer.Ordinal);
        Assert.AreEqual(Sections.Count, targets.Count, "both machines have the same sections: " + string.Join(", ", targets.Keys));
        foreach (SavedSection saved in Sections)
        {
            Assert.IsTrue(targets.TryGetValue(saved.Name, out ISaveVmSection? target), $"the destination has section {saved.Name}");
            Assert.IsTrue(saved.Version >= target.MinimumVersion && saved.Version <= target.Version, $"section {saved.Name} version {saved.Version}");
            target.Load(new SaveVmReader(saved.Data, saved.Name), saved.Version);
        }
    }
}
