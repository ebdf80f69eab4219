using System.Buffers.Binary;
using Modular.Abstractions.Transports;

namespace Modular.Transports.Rdma;

/// <summary>
/// What the destination needs to RDMA READ a source RAM block, as the page channel sends it:
/// <code>
///  0  u32 LE  magic 0x52504D52 ("RMPR")
///  4  u32 LE  rkey
///  8  u64 LE  address (source virtual address of the block's first byte)
/// 16  u64 LE  length in bytes
/// </code>
/// </summary>
internal readonly record struct RegionDescriptor(ulong Address, ulong Length, uint Rkey)
{
    internal const int Size = 24;
    private const uint Magic = 0x52504D52;

    internal byte[] ToBytes()
    {
        byte[] bytes = new byte[Size];
        BinaryPrimitives.WriteUInt32LittleEndian(bytes, Magic);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(4), Rkey);
        BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(8), Address);
        BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(16), Length);
        return bytes;
    }

    /// <exception cref="TransportException">The bytes are not a descriptor from this transport.</exception>
    internal static RegionDescriptor Parse(string blockId, ReadOnlySpan<byte> bytes)
    {
        if (bytes.Length != Size || BinaryPrimitives.ReadUInt32LittleEndian(bytes) != Magic)
        {
            throw new TransportException(
                $"The page channel descriptor for RAM block '{blockId}' is not an rdma region descriptor ({bytes.Length} bytes; expected {Size} starting with \"RMPR\").");
        }

        return new RegionDescriptor(
            BinaryPrimitives.ReadUInt64LittleEndian(bytes[8..]),
            BinaryPrimitives.ReadUInt64LittleEndian(bytes[16..]),
            BinaryPrimitives.ReadUInt32LittleEndian(bytes[4..]));
    }
}
