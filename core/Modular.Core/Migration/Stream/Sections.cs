using System.Text;

namespace Modular.Core.Migration.Stream;

/// <summary>
/// The header of a device or RAM section. START and FULL carry the whole header (be32 section id,
/// counted id string, be32 instance id, be32 version id); PART and END carry the section id only.
/// Every section ends with a <see cref="SectionFooter"/>.
/// </summary>
/// <param name="Type">START, FULL, PART or END.</param>
/// <param name="SectionId">Numbers the sections of one stream; PART/END/footer refer back to it.</param>
/// <param name="IdString">The section's name, e.g. <c>ram</c> or <c>serial</c> (START/FULL only).</param>
/// <param name="InstanceId">Tells several instances of one device apart (START/FULL only).</param>
/// <param name="VersionId">The version of the section's layout (START/FULL only).</param>
public readonly record struct SectionHeader(SectionType Type, uint SectionId, string? IdString, uint InstanceId, uint VersionId)
{
    /// <summary>A SECTION_START header.</summary>
    public static SectionHeader Start(uint sectionId, string idString, uint instanceId, uint versionId) => new(SectionType.Start, sectionId, idString, instanceId, versionId);

    /// <summary>A SECTION_FULL header.</summary>
    public static SectionHeader Full(uint sectionId, string idString, uint instanceId, uint versionId) => new(SectionType.Full, sectionId, idString, instanceId, versionId);

    /// <summary>A SECTION_PART header.</summary>
    public static SectionHeader Part(uint sectionId) => new(SectionType.Part, sectionId, null, 0, 0);

    /// <summary>A SECTION_END header.</summary>
    public static SectionHeader End(uint sectionId) => new(SectionType.End, sectionId, null, 0, 0);

    /// <summary>True for START and FULL, which carry the id string, instance and version.</summary>
    public bool HasFullHeader => Type is SectionType.Start or SectionType.Full;

    /// <summary>The record name used in errors: <c>section START</c> etc.</summary>
    public static string RecordName(SectionType type) => "section " + type.ToString().ToUpperInvariant();

    /// <summary>Writes the header, type byte included; resets the writer's RAM CONTINUE tracking.</summary>
    /// <param name="writer">The stream.</param>
    public void WriteTo(MigrationStreamWriter writer)
    {
        ArgumentNullException.ThrowIfNull(writer);
        if (Type is not (SectionType.Start or SectionType.Full or SectionType.Part or SectionType.End))
        {
            throw new InvalidOperationException($"{Type} is not a section header type.");
        }

        writer.ResetRamBlock();
        writer.WriteU8((byte)Type);
        writer.WriteBe32(SectionId);
        if (HasFullHeader)
        {
            writer.WriteCountedString(IdString ?? throw new InvalidOperationException($"A {Type} section header needs an id string."));
            writer.WriteBe32(InstanceId);
            writer.WriteBe32(VersionId);
        }
    }

    /// <summary>Reads the header after its type byte.</summary>
    /// <param name="reader">The stream, just after the type byte.</param>
    /// <param name="type">The type byte already read.</param>
    public static async ValueTask<SectionHeader> ReadFromAsync(MigrationStreamReader reader, SectionType type)
    {
        ArgumentNullException.ThrowIfNull(reader);
        reader.BeginRecord(RecordName(type), reader.Position - 1); // starts at the type byte
        // The last RAM block named stays known across sections, as on QEMU's destination
        // (mis->last_recv_block): QEMU 7.2's source begins a section's pages with CONTINUE.
        uint id = await reader.ReadBe32Async("section id").ConfigureAwait(false);
        if (type is SectionType.Part or SectionType.End)
        {
            return new SectionHeader(type, id, null, 0, 0);
        }

        if (type is not (SectionType.Start or SectionType.Full))
        {
            throw reader.Error($"{type} is not a section header type");
        }

        string idString = await reader.ReadCountedStringAsync("id string").ConfigureAwait(false);
        uint instance = await reader.ReadBe32Async("instance id").ConfigureAwait(false);
        uint version = await reader.ReadBe32Async("version id").ConfigureAwait(false);
        return new SectionHeader(type, id, idString, instance, version);
    }
}

/// <summary>SECTION_FOOTER: 0x7e, be32 section id, after every section (QEMU's send_section_footer).</summary>
/// <param name="SectionId">Must equal the id of the section it ends.</param>
public readonly record struct SectionFooter(uint SectionId)
{
    /// <summary>Writes the footer, type byte included.</summary>
    /// <param name="writer">The stream.</param>
    public void WriteTo(MigrationStreamWriter writer)
    {
        ArgumentNullException.ThrowIfNull(writer);
        writer.WriteU8((byte)SectionType.Footer);
        writer.WriteBe32(SectionId);
    }

    /// <summary>Reads the footer, type byte included, and checks it closes <paramref name="expectedSectionId"/>.</summary>
    /// <param name="reader">The stream, at the footer's type byte.</param>
    /// <param name="expectedSectionId">The section being closed.</param>
    /// <param name="sectionName">The section's id string, for the error.</param>
    public static async ValueTask<SectionFooter> ReadFromAsync(MigrationStreamReader reader, uint expectedSectionId, string sectionName)
    {
        ArgumentNullException.ThrowIfNull(reader);
        reader.BeginRecord("section FOOTER");
        byte type = await reader.ReadU8Async("footer marker").ConfigureAwait(false);
        if (type != (byte)SectionType.Footer)
        {
            throw reader.Error($"expected the footer (0x7e) of section {expectedSectionId} '{sectionName}' but found 0x{type:x2}: the section's loader read too little or too much");
        }

        uint id = await reader.ReadBe32Async("section id").ConfigureAwait(false);
        if (id != expectedSectionId)
        {
            throw reader.Error($"footer names section {id} but section {expectedSectionId} '{sectionName}' is open");
        }

        return new SectionFooter(id);
    }
}

/// <summary>SUBSECTION inside a device section: 0x05, counted name, be32 version id.</summary>
/// <param name="Name">The subsection's vmstate name, e.g. <c>serial/fifo</c>.</param>
/// <param name="VersionId">Its version.</param>
public readonly record struct SubsectionHeader(string Name, uint VersionId)
{
    /// <summary>Writes the header, type byte included.</summary>
    /// <param name="writer">The stream.</param>
    public void WriteTo(MigrationStreamWriter writer)
    {
        ArgumentNullException.ThrowIfNull(writer);
        writer.WriteU8((byte)SectionType.Subsection);
        writer.WriteCountedString(Name);
        writer.WriteBe32(VersionId);
    }

    /// <summary>Reads the header after its type byte (the record name stays that of the enclosing section).</summary>
    /// <param name="reader">The stream, just after the 0x05 byte.</param>
    public static async ValueTask<SubsectionHeader> ReadFromAsync(MigrationStreamReader reader)
    {
        ArgumentNullException.ThrowIfNull(reader);
        string name = await reader.ReadCountedStringAsync("subsection name").ConfigureAwait(false);
        uint version = await reader.ReadBe32Async("subsection version").ConfigureAwait(false);
        return new SubsectionHeader(name, version);
    }
}

/// <summary>VMDESCRIPTION after EOF: 0x06, be32 length, JSON (no NUL) describing the device sections.</summary>
/// <param name="Json">The description: <c>{"page_size":4096,"devices":[...]}</c>.</param>
public sealed record VmDescription(string Json)
{
    /// <summary>Writes the record, type byte included.</summary>
    /// <param name="writer">The stream.</param>
    public void WriteTo(MigrationStreamWriter writer)
    {
        ArgumentNullException.ThrowIfNull(writer);
        byte[] json = Encoding.UTF8.GetBytes(Json);
        writer.WriteU8((byte)SectionType.VmDescription);
        writer.WriteBe32((uint)json.Length);
        writer.WriteBytes(json);
    }

    /// <summary>Reads the record after its type byte.</summary>
    /// <param name="reader">The stream, just after the 0x06 byte.</param>
    public static async ValueTask<VmDescription> ReadFromAsync(MigrationStreamReader reader)
    {
        ArgumentNullException.ThrowIfNull(reader);
        reader.BeginRecord("VMDESCRIPTION", reader.Position - 1);
        long at = reader.Position;
        uint length = await reader.ReadBe32Async("JSON length").ConfigureAwait(false);
        byte[] json = await reader.ReadBlobAsync(length, reader.Limits.MaxVmDescriptionLength, at, "JSON").ConfigureAwait(false);
        return new VmDescription(Encoding.UTF8.GetString(json));
    }
}

public sealed partial class MigrationStreamReader
{
    /// <summary>Reads the type byte of the next top-level record and checks it is a known one.</summary>
    public async ValueTask<SectionType> ReadSectionTypeAsync()
    {
        BeginRecord("section type");
        byte value = await ReadU8Async("section type byte").ConfigureAwait(false);
        SectionType type = (SectionType)value;
        if (type is not (SectionType.Eof or SectionType.Start or SectionType.Part or SectionType.End or SectionType.Full
            or SectionType.Subsection or SectionType.VmDescription or SectionType.Configuration or SectionType.Command or SectionType.Footer))
        {
            throw Error($"unknown section type 0x{value:x2}");
        }

        return type;
    }
}
