using Modular.Abstractions.Devices;

namespace Modular.Core.Migration.Engine;

/// <summary>
/// The Modular-specific SECTION_FULL "x-modular-postcopy-preempt" (instance 0, version 1): the source
/// announces that it opens extra channel <see cref="ChannelIndex"/> for postcopy's requested pages
/// (QEMU's postcopy-preempt capability) and the destination accepts it. Sent right after
/// POSTCOPY_ADVISE. Body, as device sections carry theirs: be32 length, then be32 channel index.
/// The channel carries RAM records only (PAGE/ZERO with the block id, CONTINUE within a batch), one
/// batch per request, each ended by EOS.
/// </summary>
internal static class PreemptChannelSection
{
    /// <summary>The section's id string.</summary>
    internal const string Name = "x-modular-postcopy-preempt";

    /// <summary>The section's version.</summary>
    internal const uint Version = 1;

    /// <summary>The extra channel requested pages travel on.</summary>
    internal const int ChannelIndex = 1;

    /// <summary>How long either side waits for the other to open the channel.</summary>
    internal static readonly TimeSpan OpenTimeout = TimeSpan.FromSeconds(30);

    /// <summary>Encodes the section's state (without the be32 length in front).</summary>
    internal static SaveVmWriter Encode()
    {
        var state = new SaveVmWriter();
        state.WriteBe32(ChannelIndex);
        return state;
    }

    /// <summary>Decodes the section's state: the channel index.</summary>
    /// <exception cref="DeviceStateException">The state is truncated or has trailing bytes.</exception>
    internal static int Decode(byte[] state)
    {
        var reader = new SaveVmReader(state, Name);
        uint index = reader.ReadBe32("channel index");
        reader.ExpectEnd();
        return (int)Math.Min(index, int.MaxValue);
    }
}
