namespace Modular.Core.Migration.Stream;

// The numbers on this page are QEMU's migration stream v3 (migration/savevm.c, migration/ram.c,
// migration/migration.c); docs/protocol.md lists where each was checked. Never renumber.

/// <summary>
/// The byte that starts every top-level record of the forward stream (QEMU_VM_*).
/// There is no Invalid member: QEMU uses 0 for EOF.
/// </summary>
public enum SectionType : byte
{
    /// <summary>QEMU_VM_EOF: end of the device state (a VMDESCRIPTION may follow).</summary>
    Eof = 0x00,

    /// <summary>QEMU_VM_SECTION_START: first part of an iterative section (RAM); full header.</summary>
    Start = 0x01,

    /// <summary>QEMU_VM_SECTION_PART: a further part of an iterative section; section id only.</summary>
    Part = 0x02,

    /// <summary>QEMU_VM_SECTION_END: last part of an iterative section; section id only.</summary>
    End = 0x03,

    /// <summary>QEMU_VM_SECTION_FULL: a whole device section; full header.</summary>
    Full = 0x04,

    /// <summary>QEMU_VM_SUBSECTION: an optional part inside a device section.</summary>
    Subsection = 0x05,

    /// <summary>QEMU_VM_VMDESCRIPTION: be32 length + JSON describing the device sections.</summary>
    VmDescription = 0x06,

    /// <summary>QEMU_VM_CONFIGURATION: machine type (and optional subsections) right after the header.</summary>
    Configuration = 0x07,

    /// <summary>QEMU_VM_COMMAND: be16 command, be16 length, payload.</summary>
    Command = 0x08,

    /// <summary>QEMU_VM_SECTION_FOOTER: repeats the section id after each section.</summary>
    Footer = 0x7e,
}

/// <summary>Commands carried by <see cref="SectionType.Command"/> records (QEMU's enum qemu_vm_cmd).</summary>
public enum MigrationCommand : ushort
{
    /// <summary>MIG_CMD_INVALID: never sent.</summary>
    Invalid = 0,

    /// <summary>Destination: open the return path. No payload.</summary>
    OpenReturnPath = 1,

    /// <summary>Destination: answer with a PONG carrying the same be32.</summary>
    Ping = 2,

    /// <summary>be64 host page size summary, be64 target page size.</summary>
    PostcopyAdvise = 3,

    /// <summary>Destination: start the listen thread; pages may arrive at any time. No payload.</summary>
    PostcopyListen = 4,

    /// <summary>Destination: start the vCPUs. No payload.</summary>
    PostcopyRun = 5,

    /// <summary>u8 version 0, u8 length + RAM block id, u8 0, then be64 start / be64 length pairs.</summary>
    PostcopyRamDiscard = 6,

    /// <summary>be32 length; that many bytes of nested stream follow the command.</summary>
    Packaged = 7,

    /// <summary>MIG_CMD_ENABLE_COLO: not supported by Modular.</summary>
    EnableColo = 8,

    /// <summary>Postcopy recovery: the source is ready to resume. No payload.</summary>
    PostcopyResume = 9,

    /// <summary>Postcopy recovery: u8 length + RAM block id whose received bitmap the source wants.</summary>
    RecvBitmap = 10,

    /// <summary>The source is about to switch over. No payload.</summary>
    SwitchoverStart = 11,
}

/// <summary>Return-path messages, destination to source (QEMU's enum mig_rp_message_type).</summary>
public enum ReturnPathMessageType : ushort
{
    /// <summary>MIG_RP_MSG_INVALID: never sent.</summary>
    Invalid = 0,

    /// <summary>be32 error flag (0 = fine): the destination will send nothing more.</summary>
    Shut = 1,

    /// <summary>be32: the value of the PING being answered.</summary>
    Pong = 2,

    /// <summary>be64 start, be32 length, u8 length + RAM block id.</summary>
    ReqPagesId = 3,

    /// <summary>be64 start, be32 length; same RAM block as the previous request.</summary>
    ReqPages = 4,

    /// <summary>u8 length + RAM block id; the bitmap itself follows on the return path.</summary>
    RecvBitmap = 5,

    /// <summary>be32 value, always 1: the destination is ready to resume postcopy.</summary>
    ResumeAck = 6,

    /// <summary>No payload: the destination allows the switchover.</summary>
    SwitchoverAck = 7,
}

/// <summary>
/// Flags in the low bits of each be64 word of the "ram" section (RAM_SAVE_FLAG_*). The high bits
/// are a page-aligned offset in the RAM block (or, with <see cref="MemSize"/>, the total RAM size).
/// </summary>
[Flags]
public enum RamRecordFlags : ulong
{
    /// <summary>No flag.</summary>
    None = 0,

    /// <summary>RAM_SAVE_FLAG_FULL: obsolete, refused.</summary>
    Full = 0x01,

    /// <summary>A page filled with one byte (always 0 nowadays), which follows.</summary>
    Zero = 0x02,

    /// <summary>The RAM block list follows: u8 length + id, be64 length, for each block.</summary>
    MemSize = 0x04,

    /// <summary>A whole target page follows.</summary>
    Page = 0x08,

    /// <summary>End of this part of the RAM section.</summary>
    Eos = 0x10,

    /// <summary>Same RAM block as the previous record: no id string follows.</summary>
    Continue = 0x20,

    /// <summary>RAM_SAVE_FLAG_XBZRLE: the page as a difference to the copy sent before (<see cref="Stream.Xbzrle"/>).</summary>
    Xbzrle = 0x40,

    /// <summary>RAM_SAVE_FLAG_HOOK (RDMA): not supported by Modular.</summary>
    Hook = 0x80,

    /// <summary>RAM_SAVE_FLAG_COMPRESS_PAGE: not supported by Modular.</summary>
    CompressPage = 0x100,

    /// <summary>RAM_SAVE_FLAG_MULTIFD_FLUSH: not supported by Modular.</summary>
    MultifdFlush = 0x200,
}

/// <summary>Fixed numbers of the stream format.</summary>
public static class StreamFormat
{
    /// <summary>QEMU_VM_FILE_MAGIC, "QEVM".</summary>
    public const uint Magic = 0x5145564d;

    /// <summary>QEMU_VM_FILE_VERSION.</summary>
    public const uint Version = 3;

    /// <summary>QEMU_VM_FILE_VERSION_COMPAT: the obsolete v2 format, refused with its own message.</summary>
    public const uint ObsoleteVersion = 2;

    /// <summary>Target page size of x86: offsets in RAM records are multiples of it and flags live below it.</summary>
    public const int TargetPageSize = 4096;

    /// <summary>The version id of the "ram" section (QEMU registers it with version 4).</summary>
    public const uint RamSectionVersion = 4;

    /// <summary>The id string of the RAM section.</summary>
    public const string RamSectionId = "ram";

    /// <summary>The only POSTCOPY_RAM_DISCARD payload version.</summary>
    public const byte RamDiscardVersion = 0;

    /// <summary>The only RESUME_ACK value (MIGRATION_RESUME_ACK_VALUE).</summary>
    public const uint ResumeAckValue = 1;

    /// <summary>Ends the received bitmap on the return path (RAMBLOCK_RECV_BITMAP_ENDING).</summary>
    public const ulong ReceivedBitmapEnding = 0x0123456789abcdefUL;

    /// <summary>QEMU's source reads return-path messages into a 512-byte buffer; longer ones are refused.</summary>
    public const int MaxReturnPathPayload = 512;
}

/// <summary>
/// Upper bounds the reader enforces on lengths read from the wire, before it allocates anything.
/// </summary>
/// <param name="MaxPackagedLength">Largest PACKAGED blob (QEMU allows up to 4 GiB; device state is far smaller).</param>
/// <param name="MaxVmDescriptionLength">Largest VMDESCRIPTION JSON.</param>
/// <param name="MaxConfigurationNameLength">Largest machine type name in CONFIGURATION.</param>
/// <param name="MaxReceivedBitmapLength">Largest received bitmap on the return path, in bytes.</param>
public sealed record StreamLimits(
    uint MaxPackagedLength = 256u << 20,
    uint MaxVmDescriptionLength = 16u << 20,
    uint MaxConfigurationNameLength = 256,
    ulong MaxReceivedBitmapLength = 64ul << 20)
{
    /// <summary>The defaults.</summary>
    public static StreamLimits Default { get; } = new();
}
