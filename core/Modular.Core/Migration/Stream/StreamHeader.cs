using System.Text;

namespace Modular.Core.Migration.Stream;

/// <summary>The stream header: be32 magic 0x5145564d ("QEVM"), be32 version 3.</summary>
/// <param name="Magic">Always <see cref="StreamFormat.Magic"/> in a valid stream.</param>
/// <param name="Version">Always <see cref="StreamFormat.Version"/> in a valid stream.</param>
public readonly record struct StreamHeader(uint Magic, uint Version)
{
    /// <summary>The header Modular writes and accepts.</summary>
    public static StreamHeader Current => new(StreamFormat.Magic, StreamFormat.Version);

    /// <summary>Writes the 8 header bytes.</summary>
    /// <param name="writer">The stream.</param>
    public void WriteTo(MigrationStreamWriter writer)
    {
        ArgumentNullException.ThrowIfNull(writer);
        writer.WriteBe32(Magic);
        writer.WriteBe32(Version);
    }

    /// <summary>Reads and checks the header.</summary>
    /// <param name="reader">The stream, at its first byte.</param>
    /// <exception cref="MigrationStreamException">Wrong magic, obsolete or unknown version, or truncated.</exception>
    public static async ValueTask<StreamHeader> ReadFromAsync(MigrationStreamReader reader)
    {
        ArgumentNullException.ThrowIfNull(reader);
        reader.BeginRecord("stream header");
        uint magic = await reader.ReadBe32Async("magic").ConfigureAwait(false);
        if (magic != StreamFormat.Magic)
        {
            throw reader.Error($"magic is 0x{magic:x8}, not 0x{StreamFormat.Magic:x8} (\"QEVM\"): this is not a QEMU/Modular migration stream");
        }

        uint version = await reader.ReadBe32Async("version").ConfigureAwait(false);
        if (version == StreamFormat.ObsoleteVersion)
        {
            throw reader.ErrorAt(reader.Position - 4, "version 2 is QEMU's obsolete savevm format; only version 3 is supported");
        }

        if (version != StreamFormat.Version)
        {
            throw reader.ErrorAt(reader.Position - 4, $"unsupported stream version {version}; only version {StreamFormat.Version} is supported");
        }

        return new StreamHeader(magic, version);
    }
}

/// <summary>
/// The CONFIGURATION record QEMU writes right after the header (vmstate "configuration" v1):
/// 0x07, be32 name length, machine type name; then optional subsections
/// "configuration/target-page-bits" (be32) and "configuration/capabilities" (be32 count, then a
/// counted string per capability). Neither subsection is sent for x86 with default capabilities.
/// There is no section footer.
/// </summary>
/// <param name="MachineType">The machine type name, e.g. <c>pc-i440fx-9.0</c> or <c>modular-1</c>.</param>
/// <param name="TargetPageBits">When set, the target-page-bits subsection is written.</param>
/// <param name="Capabilities">When set, the capabilities subsection is written.</param>
public sealed record ConfigurationSection(string MachineType, uint? TargetPageBits = null, IReadOnlyList<string>? Capabilities = null)
{
    private const string TargetPageBitsName = "configuration/target-page-bits";
    private const string CapabilitiesName = "configuration/capabilities";

    /// <summary>Writes the record, type byte included.</summary>
    /// <param name="writer">The stream.</param>
    public void WriteTo(MigrationStreamWriter writer)
    {
        ArgumentNullException.ThrowIfNull(writer);
        byte[] name = Encoding.UTF8.GetBytes(MachineType);
        writer.WriteU8((byte)SectionType.Configuration);
        writer.WriteBe32((uint)name.Length);
        writer.WriteBytes(name);
        if (TargetPageBits is uint bits)
        {
            new SubsectionHeader(TargetPageBitsName, 1).WriteTo(writer);
            writer.WriteBe32(bits);
        }

        if (Capabilities is { } caps)
        {
            new SubsectionHeader(CapabilitiesName, 1).WriteTo(writer);
            writer.WriteBe32((uint)caps.Count);
            foreach (string cap in caps)
            {
                writer.WriteCountedString(cap);
            }
        }
    }

    /// <summary>Reads the record after its type byte, subsections included.</summary>
    /// <param name="reader">The stream, just after the 0x07 byte.</param>
    public static async ValueTask<ConfigurationSection> ReadFromAsync(MigrationStreamReader reader)
    {
        ArgumentNullException.ThrowIfNull(reader);
        long start = reader.Position - 1;
        reader.BeginRecord("CONFIGURATION", start);
        long lengthAt = reader.Position;
        uint length = await reader.ReadBe32Async("machine type length").ConfigureAwait(false);
        byte[] name = await reader.ReadBlobAsync(length, reader.Limits.MaxConfigurationNameLength, lengthAt, "machine type").ConfigureAwait(false);
        uint? bits = null;
        List<string>? caps = null;
        while (await reader.PeekU8Async("subsection").ConfigureAwait(false) == (int)SectionType.Subsection)
        {
            await reader.ReadU8Async("subsection").ConfigureAwait(false);
            long at = reader.Position;
            SubsectionHeader sub = await SubsectionHeader.ReadFromAsync(reader).ConfigureAwait(false);
            if (sub.Name == TargetPageBitsName)
            {
                bits = await reader.ReadBe32Async("target page bits").ConfigureAwait(false);
            }
            else if (sub.Name == CapabilitiesName)
            {
                uint count = await reader.ReadBe32Async("capability count").ConfigureAwait(false);
                if (count > 64)
                {
                    throw reader.ErrorAt(at, $"{count} capabilities is more than any QEMU sends");
                }

                caps = new List<string>((int)count);
                for (uint i = 0; i < count; i++)
                {
                    caps.Add(await reader.ReadCountedStringAsync("capability").ConfigureAwait(false));
                }
            }
            else
            {
                throw reader.ErrorAt(at, $"unknown subsection '{sub.Name}' in CONFIGURATION");
            }

            reader.BeginRecord("CONFIGURATION", start);
        }

        return new ConfigurationSection(Encoding.UTF8.GetString(name), bits, caps);
    }
}
