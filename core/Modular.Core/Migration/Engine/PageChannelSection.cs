using Modular.Abstractions.Devices;

namespace Modular.Core.Migration.Engine;

/// <summary>
/// The Modular-specific SECTION_FULL "x-modular-page-channel" (instance 0, version 1): the region
/// descriptors a page-channel transport (<see cref="Abstractions.Transports.IPageChannel"/>) returned
/// on the source, one per RAM block. Sent right after POSTCOPY_ADVISE when the connection offers a page
/// channel; a destination whose connection has none reads and ignores it. Body, as device sections
/// carry theirs: be32 length, then be32 count and per block u8 length + name, be32 length + descriptor.
/// </summary>
internal static class PageChannelSection
{
    /// <summary>The section's id string.</summary>
    internal const string Name = "x-modular-page-channel";

    /// <summary>The section's version.</summary>
    internal const uint Version = 1;

    /// <summary>The largest descriptor accepted (an rkey, address and length need a few dozen bytes).</summary>
    internal const int MaxDescriptorLength = 4096;

    /// <summary>Encodes the section's state (without the be32 length in front). Migration task.</summary>
    internal static SaveVmWriter Encode(IReadOnlyList<(string BlockId, ReadOnlyMemory<byte> Descriptor)> regions)
    {
        var state = new SaveVmWriter();
        state.WriteBe32((uint)regions.Count);
        foreach ((string blockId, ReadOnlyMemory<byte> descriptor) in regions)
        {
            if (descriptor.Length > MaxDescriptorLength)
            {
                throw new InvalidOperationException($"the page channel's descriptor for RAM block '{blockId}' is {descriptor.Length} bytes, over the {MaxDescriptorLength} a destination accepts; the transport plugin is at fault");
            }

            state.WriteShortString(blockId);
            state.WriteBuffer(descriptor.Span);
        }

        return state;
    }

    /// <summary>Decodes the section's state. Main incoming task.</summary>
    /// <exception cref="DeviceStateException">The state is truncated or has trailing bytes.</exception>
    internal static List<(string BlockId, byte[] Descriptor)> Decode(byte[] state)
    {
        var reader = new SaveVmReader(state, Name);
        uint count = reader.ReadBe32("region count");
        var regions = new List<(string, byte[])>();
        for (uint i = 0; i < count; i++)
        {
            string blockId = reader.ReadShortString("RAM block id");
            byte[] descriptor = reader.ReadBuffer(MaxDescriptorLength, "descriptor").ToArray();
            regions.Add((blockId, descriptor));
        }

        reader.ExpectEnd();
        return regions;
    }
}
