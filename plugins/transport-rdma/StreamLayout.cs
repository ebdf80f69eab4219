using System.Buffers.Binary;

namespace Modular.Transports.Rdma;

/// <summary>
/// The byte stream's sizes and its wire format. Every message is one IBV_WR_SEND_WITH_IMM of 0 to
/// <see cref="SlotSize"/> payload bytes into one of the peer's pre-posted receive slots. The 32-bit
/// immediate value carries the flow control:
/// <code>
///  bits 0-15  credits: receive slots the sender has re-posted since its last message
///  bit  16    FIN: the sender's stream ends after this message's payload
/// </code>
/// A side may send only while it holds a credit for a posted peer receive; without one the HCA would
/// get an RNR NAK. Data and FIN keep the last credit in reserve; only a credit-only update may spend
/// it, and an update returns at least <see cref="CreditUpdateThreshold"/> credits, so two sides never
/// both sit at zero credits (docs/rdma.md walks through why).
/// </summary>
internal static class StreamLayout
{
    /// <summary>Payload bytes per message (and per receive slot).</summary>
    internal const int SlotSize = 64 * 1024;

    /// <summary>Receive slots each side posts; also the credits each side starts with.</summary>
    internal const int ReceiveSlots = 32;

    /// <summary>Send slots each side owns (payload is copied from the output pipe into one of these).</summary>
    internal const int SendSlots = 32;

    /// <summary>Owed credits that trigger a credit-only update when there is no data to carry them.</summary>
    internal const int CreditUpdateThreshold = ReceiveSlots / 2;

    /// <summary>Staging slots for RDMA READs of the page channel.</summary>
    internal const int ReadSlots = 4;

    /// <summary>Bytes per staging slot (a larger read is split).</summary>
    internal const int ReadSlotSize = 256 * 1024;

    /// <summary>Outstanding RDMA READs the QP may issue / answer (rdma_conn_param initiator_depth, responder_resources).</summary>
    internal const byte ReadDepth = ReadSlots;

    /// <summary>Send-queue depth: data and updates are bounded by credits (ReceiveSlots) but completions may lag credit returns, so twice that, plus the reads.</summary>
    internal const int SendQueueDepth = (2 * ReceiveSlots) + ReadSlots;

    /// <summary>Completion-queue depth: every signalled send and every receive can be outstanding at once.</summary>
    internal const int CompletionQueueDepth = SendQueueDepth + ReceiveSlots;

    /// <summary>Private data of the connect request and accept: "MRDM", version 1, slot count, slot size in KiB.</summary>
    internal static ulong Hello { get; } = BinaryPrimitives.ReadUInt64LittleEndian(
        [(byte)'M', (byte)'R', (byte)'D', (byte)'M', 1, ReceiveSlots, (byte)(SlotSize / 1024 / 4), 0]);

    private const uint CreditMask = 0xFFFF;
    private const uint FinBit = 1u << 16;

    /// <summary>The immediate value for a message, in network byte order as imm_data wants it.</summary>
    internal static uint EncodeImmediate(int credits, bool fin) =>
        BinaryPrimitives.ReverseEndianness((uint)credits & CreditMask | (fin ? FinBit : 0));

    /// <summary>Splits an imm_data (network byte order) into credits and FIN.</summary>
    internal static (int Credits, bool Fin) DecodeImmediate(uint immData)
    {
        uint value = BinaryPrimitives.ReverseEndianness(immData);
        return ((int)(value & CreditMask), (value & FinBit) != 0);
    }
}

/// <summary>What a work request is, encoded in its wr_id: kind in the top byte, slot index below.</summary>
internal enum WorkKind : byte
{
    /// <summary>Not used; wr_id 0 is never posted.</summary>
    Invalid = 0,

    /// <summary>A receive into a receive slot.</summary>
    Receive = 1,

    /// <summary>A data or FIN send from a send slot.</summary>
    Send = 2,

    /// <summary>A credit-only update (no payload, no slot).</summary>
    CreditUpdate = 3,

    /// <summary>An RDMA READ into a staging slot.</summary>
    Read = 4,
}

/// <summary>Packs and unpacks wr_id values.</summary>
internal static class WorkId
{
    internal static ulong Make(WorkKind kind, int slot) => ((ulong)kind << 56) | (uint)slot;

    internal static (WorkKind Kind, int Slot) Split(ulong wrId) => ((WorkKind)(wrId >> 56), (int)(uint)wrId);
}
