using System.IO.Pipelines;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging;
using Modular.Abstractions.Devices;
using Modular.Abstractions.Transports;
using Modular.Core.Memory;
using Modular.Core.Migration.Stream;

namespace Modular.Core.Migration.Engine;

/// <summary>Device sections, the return path, and the end of an outgoing migration.</summary>
public sealed partial class OutgoingMigration
{
    private static readonly TimeSpan DestinationAckTimeout = TimeSpan.FromSeconds(60);

    /// <summary>
    /// Writes every device and vCPU section as SECTION_FULL: header, be32 length and the state the
    /// section saved, footer. (QEMU's VMState fields are self-delimiting; Modular's device state is an
    /// opaque versioned blob, so it carries its length, and the VM description says so.)
    /// Migration task, vCPUs stopped.
    /// </summary>
    internal static uint WriteDeviceSections(MigrationStreamWriter writer, IReadOnlyList<ISaveVmSection> sections, uint firstSectionId, VmDescriptionBuilder? description)
    {
        uint id = firstSectionId;
        foreach (ISaveVmSection section in sections)
        {
            var state = new SaveVmWriter();
            section.Save(state);
            WriteFullSection(writer, id, section.IdString, section.InstanceId, section.Version, state);
            description?.AddDevice(section, state.Length);
            id++;
        }

        return id;
    }

    /// <summary>A SECTION_FULL carrying <paramref name="state"/> as Modular's sections do: header, be32 length, the state, footer.</summary>
    private static void WriteFullSection(MigrationStreamWriter writer, uint id, string idString, uint instanceId, uint version, SaveVmWriter state)
    {
        SectionHeader.Full(id, idString, instanceId, version).WriteTo(writer);
        writer.WriteBe32((uint)state.Length);
        writer.WriteBytes(state.WrittenSpan);
        new SectionFooter(id).WriteTo(writer);
    }

    /// <summary>
    /// The connection offers a page channel: expose every RAM block for remote reads and send the
    /// descriptors in the "x-modular-page-channel" section, so the destination can serve postcopy
    /// faults by reading pages itself. A transport that refuses to expose a block costs only the
    /// optimisation: the section is not sent and faults use REQ_PAGES. Migration task, after
    /// POSTCOPY_ADVISE. (The source's RAM stays mapped until the destination's SHUT, so the
    /// regions stay valid for as long as the destination can read them.)
    /// </summary>
    private void WritePageChannelSection(MigrationStreamWriter writer, IPageChannel channel, uint sectionId)
    {
        var regions = new List<(string, ReadOnlyMemory<byte>)>();
        foreach (RamBlock block in _machine.Ram.Blocks)
        {
            try
            {
                regions.Add((block.Name, channel.ExposeRegion(block.Name, block.HostAddress, block.Size)));
            }
            catch (TransportException ex)
            {
                _logger.LogWarning("The page channel of {Connection} could not expose RAM block '{Block}' ({Error}); postcopy faults will use REQ_PAGES on the return path.", _connection?.RemoteDescription, block.Name, ex.Message);
                return;
            }
        }

        WriteFullSection(writer, sectionId, PageChannelSection.Name, 0, PageChannelSection.Version, PageChannelSection.Encode(regions));
        _logger.LogInformation("Page channel: {Count} RAM blocks exposed to {Connection}; postcopy faults are served by remote reads.", regions.Count, _connection?.RemoteDescription);
    }

    /// <summary>The return-path reader task: SHUT, PONG, and (postcopy) page requests.</summary>
    private async Task ReadReturnPathAsync(IMigrationConnection connection)
    {
        var reader = new MigrationStreamReader(connection.Transport.Input);
        try
        {
            while (!await reader.IsAtEndAsync().ConfigureAwait(false))
            {
                ReturnPathMessage message = await ReturnPathMessage.ReadFromAsync(reader).ConfigureAwait(false);
                switch (message.Type)
                {
                    case ReturnPathMessageType.Shut:
                        _shutReceived.TrySetResult(message.Value);
                        return;
                    case ReturnPathMessageType.Pong:
                        if (message.Value == PostcopyPackageSentPing && Volatile.Read(ref _packageFlushedAt) is > 0 and long flushedAt)
                        {
                            // The answer to the PING that follows the postcopy package (RunPostcopyAsync):
                            // noted, and the preempt channel's send path (here, where requested pages
                            // are sent) and the destination's receive path run once more before the
                            // first request.
                            Stats.SetPostcopyPong(System.Diagnostics.Stopwatch.GetElapsedTime(flushedAt).TotalMilliseconds);
                            if (_preempt is { } preempt)
                            {
                                await preempt.SendAsync(0, 0, 0, _cancel.Token).ConfigureAwait(false);
                            }
                        }

                        break;
                    case ReturnPathMessageType.ReqPages or ReturnPathMessageType.ReqPagesId:
                        await OnPageRequestAsync(message).ConfigureAwait(false);
                        break;
                    case ReturnPathMessageType.RecvBitmap:
                        ReceivedBitmap bitmap = await ReceivedBitmap.ReadFromAsync(reader).ConfigureAwait(false);
                        OnReceivedBitmap(message.BlockId!, bitmap);
                        break;
                    case ReturnPathMessageType.ResumeAck:
                        OnResumeAck();
                        break;
                    default:
                        throw reader.Error($"unexpected {ReturnPathMessage.RecordName(message.Type)} message");
                }
            }

            _shutReceived.TrySetException(new IOException("the destination closed the return path without saying whether it loaded the guest"));
        }
        catch (Exception ex)
        {
            _shutReceived.TrySetException(new IOException("the return path failed: " + ex.Message, ex));
            if (_inPostcopy && RecoveryEnabled)
            {
                // Page requests can no longer arrive: end the forward path too, so that the migration
                // task pauses now rather than when it next waits for the destination.
                connection.Abort(new IOException("the return path failed: " + ex.Message, ex));
            }
        }
    }

    /// <summary>Waits until the destination has everything: its SHUT on the return path, or the connection's close.</summary>
    private async Task WaitForDestinationAsync(IMigrationConnection connection, bool returnPath, Task returnPathReader)
    {
        if (returnPath)
        {
            uint error = await _shutReceived.Task.WaitAsync(DestinationAckTimeout, _cancel.Token).ConfigureAwait(false);
            await returnPathReader.ConfigureAwait(false);
            if (error != 0)
            {
                throw new DestinationFailedException("the destination could not load the guest (it sent SHUT with the error flag); see the destination's log");
            }

            return;
        }

        await connection.Transport.Output.CompleteAsync().ConfigureAwait(false);
        PipeReader input = connection.Transport.Input;
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_cancel.Token);
        timeout.CancelAfter(DestinationAckTimeout);
        while (true)
        {
            ReadResult read = await input.ReadAsync(timeout.Token).ConfigureAwait(false);
            input.AdvanceTo(read.Buffer.End);
            if (read.IsCompleted || read.IsCanceled)
            {
                return;
            }
        }
    }
}

/// <summary>
/// Builds the VMDESCRIPTION JSON that follows EOF (QEMU's vmdesc, as analyze-migration.py reads it).
/// Devices are recorded while the guest is stopped, so recording only keeps their figures; the
/// JSON is built after EOF.
/// </summary>
internal sealed class VmDescriptionBuilder
{
    private readonly List<(string IdString, uint InstanceId, uint Version, int Length)> _devices = [];

    internal void AddRam(uint sectionId) => _ = sectionId;

    internal void AddDevice(ISaveVmSection section, int length) => _devices.Add((section.IdString, section.InstanceId, section.Version, length));

    internal string ToJson()
    {
        var devices = new JsonArray();
        foreach ((string idString, uint instanceId, uint version, int length) in _devices)
        {
            devices.Add(new JsonObject
            {
                ["name"] = idString,
                ["instance_id"] = instanceId,
                ["vmsd_name"] = idString,
                ["version"] = version,
                ["fields"] = new JsonArray
                {
                    new JsonObject { ["name"] = "length", ["type"] = "uint32", ["size"] = 4 },
                    new JsonObject { ["name"] = "state", ["type"] = "buffer", ["size"] = length },
                },
            });
        }

        return new JsonObject { ["page_size"] = 4096, ["devices"] = devices }.ToJsonString();
    }
}
