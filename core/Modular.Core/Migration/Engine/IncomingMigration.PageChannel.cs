using Microsoft.Extensions.Logging;
using Modular.Abstractions.Devices;
using Modular.Abstractions.Transports;
using Modular.Core.Memory;
using Modular.Core.Migration.Postcopy;
using Modular.Core.Migration.Stream;

namespace Modular.Core.Migration.Engine;

/// <summary>The destination's side of the page channel: the "x-modular-page-channel" section.</summary>
public sealed partial class IncomingMigration
{
    private PostcopyPageChannel? _pageChannel;

    /// <summary>The rest of a SECTION_FULL that carries its state as Modular's sections do: be32 length, the state (at most <paramref name="limit"/> bytes), footer.</summary>
    private static async ValueTask<byte[]> ReadSectionStateAsync(MigrationStreamReader reader, SectionHeader header, string idString, string what, ulong limit)
    {
        long lengthAt = reader.Position;
        uint length = await reader.ReadBe32Async(what + " length").ConfigureAwait(false);
        byte[] state = await reader.ReadBlobAsync(length, limit, lengthAt, what).ConfigureAwait(false);
        await SectionFooter.ReadFromAsync(reader, header.SectionId, idString).ConfigureAwait(false);
        return state;
    }

    /// <summary>
    /// The "x-modular-page-channel" section (after POSTCOPY_ADVISE): attach each RAM block's source
    /// region when this connection offers a page channel, so the fault thread reads missing pages
    /// itself; otherwise read and ignore it (faults use REQ_PAGES). A region the transport refuses
    /// leaves that block on REQ_PAGES. Main incoming task, before LISTEN.
    /// </summary>
    private async ValueTask LoadPageChannelSectionAsync(SectionHeader header, IMigrationConnection connection, MigrationStreamReader reader, long at)
    {
        byte[] state = await ReadSectionStateAsync(reader, header, PageChannelSection.Name, "page channel state", 1 << 20).ConfigureAwait(false);
        if (connection is not IPageChannel channel)
        {
            _logger.LogInformation("The source offered a page channel, but {Connection} has none; postcopy faults use REQ_PAGES.", connection.RemoteDescription);
            return;
        }

        if (header.InstanceId != 0 || header.VersionId != PageChannelSection.Version)
        {
            _logger.LogWarning("Section '{Section}' instance {Instance} version {Version} is not what this destination reads (instance 0, version {Known}); postcopy faults use REQ_PAGES.", PageChannelSection.Name, header.InstanceId, header.VersionId, PageChannelSection.Version);
            return;
        }

        if (_postcopyRam is null || PostcopyState.Current != State.PostcopyState.Advise)
        {
            throw reader.ErrorAt(at, $"section '{PageChannelSection.Name}' outside postcopy's ADVISE state (state {State.PostcopyStateMachine.Name(PostcopyState.Current)}); the source sends it right after POSTCOPY_ADVISE");
        }

        List<(string BlockId, byte[] Descriptor)> regions;
        try
        {
            regions = PageChannelSection.Decode(state);
        }
        catch (DeviceStateException ex)
        {
            throw reader.ErrorAt(at, ex.Message.TrimEnd('.'));
        }

        var pageChannel = new PostcopyPageChannel(channel, connection.RemoteDescription, _logger);
        foreach ((string blockId, byte[] descriptor) in regions)
        {
            RamBlock block = _machine.Ram.Blocks.FirstOrDefault(b => b.Name == blockId)
                ?? throw reader.ErrorAt(at, $"section '{PageChannelSection.Name}' names RAM block '{blockId}', which this machine does not have (it has {string.Join(", ", _machine.Ram.Blocks.Select(b => b.Name))})");
            if (block.HostPageSize != RamBlock.TargetPageSize)
            {
                // A huge page is placed whole; the page channel reads one target page at a time.
                _logger.LogInformation("RAM block '{Block}' is on 0x{PageSize:x}-byte host pages; its postcopy faults use REQ_PAGES, not the page channel.", blockId, block.HostPageSize);
                continue;
            }

            try
            {
                pageChannel.Attach(block, descriptor);
            }
            catch (TransportException ex)
            {
                _logger.LogWarning("The page channel of {Connection} refused the region of RAM block '{Block}' ({Error}); its postcopy faults use REQ_PAGES.", connection.RemoteDescription, blockId, ex.Message);
            }
        }

        _pageChannel?.Dispose();
        _pageChannel = pageChannel;
        _logger.LogInformation("Page channel: {Count} of {Total} RAM blocks attached from {Connection}; postcopy faults read pages through it.", pageChannel.AttachedBlocks, regions.Count, connection.RemoteDescription);
    }
}
