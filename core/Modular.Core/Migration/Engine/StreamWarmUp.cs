using System.Buffers;
using System.IO.Pipelines;
using Modular.Core.Memory;
using Modular.Core.Migration.Stream;

namespace Modular.Core.Migration.Engine;

/// <summary>
/// Writes a small made-up migration stream and reads it back through the same readers, the RAM
/// loader and the return path use: on 1 MiB of scratch RAM, never the guest's. Part of the
/// warm-up (<see cref="SwitchWarmUp"/>): the readers are async methods whose state machines are
/// generic code that the ReadyToRun image cannot hold, so without this each is compiled, optimised,
/// when the first real stream arrives (measured: the destination took about 50 ms from accepting
/// the connection to POSTCOPY_ADVISE, most of it compiling). The stream is read twice: whole, and
/// in 7-byte pieces, so the readers' slow paths (a value split across buffers) run too; each time
/// the reader starts before the data, so it suspends and resumes as a real one does.
/// </summary>
internal static class StreamWarmUp
{
    /// <summary>Runs it once; everything is in memory, so it completes without waiting.</summary>
    internal static void Exercise()
    {
        using GuestRam scratch = GuestRam.Create(1 << 20);
        byte[] stream = Write(scratch);
        byte[] returnPath = WriteReturnPath();
        foreach (int chunk in (int[])[int.MaxValue, 7])
        {
            Feed(stream, chunk, reader => ReadAsync(scratch, reader));
            Feed(returnPath, chunk, ReadReturnPathAsync);
        }

        // A postcopy package is parsed from memory (PipeReader.Create over the blob), a reader of
        // its own whose generic code was compiled at the first package: measured 2-12 ms between
        // reading the package and its first command, where the guest runs nowhere.
        ReadAsync(scratch, new MigrationStreamReader(PipeReader.Create(new ReadOnlySequence<byte>(WritePackage())), StreamLimits.Default, 0), withHeader: false)
            .AsTask().GetAwaiter().GetResult();

        // A record split across two receive buffers is copied out by ReadOnlySequence's
        // multi-segment copy, generic code with no precompiled form: compiled here, not on the
        // channel thread while a requested page waits.
        var first = new Segment(new byte[8], 0);
        var last = new Segment(new byte[8], 8);
        first.SetNext(last);
        new ReadOnlySequence<byte>(first, 0, last, 8).CopyTo(new byte[16]);

        _ = ExerciseRequestPath();
    }

    /// <summary>
    /// A postcopy page request's path, rehearsed on scratch RAM and a backend that places nothing:
    /// the fault thread's handling of two faults (REQ_PAGES_ID, then REQ_PAGES) written through the
    /// return-path writer, the source's parsing of them, and the requested pages' arrival through a
    /// postcopy RAM loader (placement, page map, latency). ReadyToRun code resolves a call site's
    /// helper (a static base, an allocation, a generic lookup) when it first runs, each a small stub
    /// written to executable memory: measured, the first request's fault thread made six of them,
    /// 100-250 us of a request that later takes 10-50 us there. Running the same code once here
    /// resolves them before any guest waits. Measured over 16 alternating postcopy runs over tcp:
    /// the first request took a median of 0.49-0.61 ms against 0.72-1.31 ms without this.
    /// </summary>
    /// <returns>The requests the source side read and the pages the loader marked received, over both backings (4 and 4 expected).</returns>
    internal static (int Requests, ulong PagesReceived) ExerciseRequestPath()
    {
        int requestsRead = 0;
        ulong received = 0;
        foreach (GuestRamBacking backing in (GuestRamBacking[])[GuestRamBacking.Anonymous, GuestRamBacking.SharedMemfd])
        {
            using GuestRam scratch = GuestRam.Create(1 << 20, backing);
            RamBlock block = scratch.Blocks[0];
            var ram = new Postcopy.PostcopyRam(scratch, new ScratchFaultBackend());
            ram.Arm();

            var requests = new Pipe(new PipeOptions(pauseWriterThreshold: 0, readerScheduler: PipeScheduler.Inline, writerScheduler: PipeScheduler.Inline, useSynchronizationContext: false));
            var faults = new Postcopy.PostcopyFaultThread(ram, new ReturnPathWriter(requests.Writer), _ => { });
            faults.Handle(new Abstractions.Faults.PageFault(block.HostAddress, Environment.CurrentManagedThreadId, IsWrite: true));
            faults.Handle(new Abstractions.Faults.PageFault(block.HostAddress + RamBlock.TargetPageSize, Environment.CurrentManagedThreadId, IsWrite: false));
            requests.Writer.Complete();
            requestsRead += ReadRequestsAsync(new MigrationStreamReader(requests.Reader)).AsTask().GetAwaiter().GetResult();
            ulong before = ram.PagesNotReceived;

            var pages = new ArrayBufferWriter<byte>(16 * 1024);
            var writer = new MigrationStreamWriter(pages);
            byte[] page = new byte[RamBlock.TargetPageSize];
            page[0] = 1;
            writer.WriteRamPage(block.Name, 0, page);
            writer.WriteRamPage(block.Name, RamBlock.TargetPageSize, page);
            writer.WriteRamEos();
            var loader = new RamLoader(scratch, new MigrationStats()) { Postcopy = ram };
            loader.TrustBlockList();
            foreach (int chunk in (int[])[int.MaxValue, 7])
            {
                Feed(pages.WrittenSpan.ToArray(), chunk, reader => loader.LoadRecordsAsync(reader, isStart: false));
            }

            received += before - ram.PagesNotReceived;
        }

        return (requestsRead, received);
    }

    private static async ValueTask<int> ReadRequestsAsync(MigrationStreamReader reader)
    {
        int count = 0;
        while (!await reader.IsAtEndAsync().ConfigureAwait(false))
        {
            ReturnPathMessage message = await ReturnPathMessage.ReadFromAsync(reader).ConfigureAwait(false);
            count += message.Type is ReturnPathMessageType.ReqPages or ReturnPathMessageType.ReqPagesId ? 1 : 0;
        }

        return count;
    }

    /// <summary>A fault backend that places nothing and reports each page placed (the warm-up's scratch RAM is never armed for real).</summary>
    private sealed class ScratchFaultBackend : Abstractions.Faults.IFaultBackend, Abstractions.Faults.ISharedRamFaultBackend
    {
        public string? SharedRamUnavailableReason => null;

        public void Arm(Abstractions.Faults.HostRamRange range)
        {
        }

        public void ArmShared(Abstractions.Faults.HostRamRange range)
        {
        }

        public void Disarm(Abstractions.Faults.HostRamRange range)
        {
        }

        public int ReadFaults(Span<Abstractions.Faults.PageFault> faults) => 0;

        public Abstractions.Faults.PlaceResult PlacePage(nint hostAddress, ReadOnlySpan<byte> contents) => Abstractions.Faults.PlaceResult.Placed;

        public int PlacePages(nint hostAddress, ReadOnlySpan<byte> contents, ulong pageSize) => (int)((ulong)contents.Length / pageSize);

        public Abstractions.Faults.PlaceResult PlaceZeroPage(nint hostAddress, ulong pageSize) => Abstractions.Faults.PlaceResult.Placed;

        public int MapPages(nint hostAddress, ulong length) => (int)(length / RamBlock.TargetPageSize);

        public void Wake(nint hostAddress, ulong length)
        {
        }

        public void Shutdown()
        {
        }

        public void Dispose()
        {
        }
    }

    private sealed class Segment : ReadOnlySequenceSegment<byte>
    {
        internal Segment(byte[] bytes, long runningIndex)
        {
            Memory = bytes;
            RunningIndex = runningIndex;
        }

        internal void SetNext(Segment next) => Next = next;
    }

    /// <summary>
    /// Starts <paramref name="read"/> on an empty pipe, so it suspends as a real reader does (its
    /// async state machines then move to the heap and resume, which is code of its own), then
    /// writes <paramref name="bytes"/> in pieces of <paramref name="chunk"/>. The pipe's schedulers
    /// are inline: each flush runs the reader on this thread, so nothing here waits.
    /// </summary>
    private static void Feed(byte[] bytes, int chunk, Func<MigrationStreamReader, ValueTask> read)
    {
        var pipe = new Pipe(new PipeOptions(pauseWriterThreshold: 0, readerScheduler: PipeScheduler.Inline, writerScheduler: PipeScheduler.Inline, useSynchronizationContext: false));
        Task reading = read(new MigrationStreamReader(pipe.Reader)).AsTask();
        for (int at = 0; at < bytes.Length; at += chunk)
        {
            pipe.Writer.Write(bytes.AsSpan(at, Math.Min(chunk, bytes.Length - at)));
            _ = pipe.Writer.FlushAsync().AsTask().GetAwaiter().GetResult();
        }

        pipe.Writer.Complete();
        reading.GetAwaiter().GetResult();
    }

    private static byte[] Write(GuestRam scratch)
    {
        var buffer = new ArrayBufferWriter<byte>(64 * 1024);
        var writer = new MigrationStreamWriter(buffer);
        RamBlock block = scratch.Blocks[0];
        StreamHeader.Current.WriteTo(writer);
        new ConfigurationSection("x-modular-warm-up").WriteTo(writer);
        new OpenReturnPathCommand().WriteTo(writer);
        new PingCommand(1).WriteTo(writer);
        new PostcopyAdviseCommand(RamBlock.TargetPageSize, RamBlock.TargetPageSize).WriteTo(writer);

        SectionHeader.Start(0, RamSaver.SectionName, 0, RamSaver.SectionVersion).WriteTo(writer);
        using (var saver = new RamSaver(scratch, new MigrationStats()))
        {
            // The source's setup, as RunAsync does it: generic code over Modular's types (the block
            // list, the dirty count), measured 4-5 ms of a setup before this.
            saver.MarkAllDirty();
            _ = saver.DirtyPages;
            RamBlockList blocks = saver.BlockList(postcopyRam: false);
            _ = blocks.TotalLength;
            blocks.WriteTo(writer);
        }

        writer.WriteRamEos();
        new SectionFooter(0).WriteTo(writer);

        SectionHeader.Part(0).WriteTo(writer);
        byte[] page = new byte[RamBlock.TargetPageSize];
        page[1] = 1;
        writer.WriteRamPage(block.Name, 0, page);
        writer.WriteRamPage(block.Name, RamBlock.TargetPageSize, page);
        writer.WriteRamZeroPage(block.Name, 2 * RamBlock.TargetPageSize);

        // The source's page writer as requested pages use it (postcopy preempt, copied out of guest
        // RAM): over tcp the bulk pages go by reference, so without this the first requested page
        // ran this code for the first time (measured: 2.6-5.3 ms to write it, against 20 us later).
        block.CopyIn(3 * RamBlock.TargetPageSize, page);
        using (var saver = new RamSaver(scratch, new MigrationStats()))
        {
            saver.WritePage(writer, 0, 3);
            saver.WritePage(writer, 0, 4);
        }

        writer.WriteRamEos();
        new SectionFooter(0).WriteTo(writer);

        WriteMadeUpDevice(writer);
        writer.WriteEof();
        new VmDescription("{}").WriteTo(writer);
        return buffer.WrittenSpan.ToArray();
    }

    /// <summary>A device section of four made-up bytes (section id 1), as a device's FULL section is written.</summary>
    private static void WriteMadeUpDevice(MigrationStreamWriter writer)
    {
        SectionHeader.Full(1, "x-modular-warm-up", 0, 1).WriteTo(writer);
        writer.WriteBe32(4);
        writer.WriteBytes([1, 2, 3, 4]);
        new SectionFooter(1).WriteTo(writer);
    }

    /// <summary>A package as the source's switch writes it: LISTEN, a device section, RUN.</summary>
    private static byte[] WritePackage()
    {
        var buffer = new ArrayBufferWriter<byte>(256);
        var writer = new MigrationStreamWriter(buffer);
        new PostcopyListenCommand().WriteTo(writer);
        WriteMadeUpDevice(writer);
        new PostcopyRunCommand().WriteTo(writer);
        return buffer.WrittenSpan.ToArray();
    }

    private static async ValueTask ReadAsync(GuestRam scratch, MigrationStreamReader reader, bool withHeader = true)
    {
        var loader = new RamLoader(scratch, new MigrationStats());
        if (withHeader)
        {
            await StreamHeader.ReadFromAsync(reader).ConfigureAwait(false);
        }

        while (!await reader.IsAtEndAsync().ConfigureAwait(false))
        {
            SectionType type = await reader.ReadSectionTypeAsync().ConfigureAwait(false);
            switch (type)
            {
                case SectionType.Configuration:
                    await ConfigurationSection.ReadFromAsync(reader).ConfigureAwait(false);
                    break;
                case SectionType.Command:
                    await StreamCommand.ReadFromAsync(reader).ConfigureAwait(false);
                    break;
                case SectionType.Start or SectionType.Part:
                {
                    SectionHeader header = await SectionHeader.ReadFromAsync(reader, type).ConfigureAwait(false);
                    await loader.LoadRecordsAsync(reader, type == SectionType.Start).ConfigureAwait(false);
                    await SectionFooter.ReadFromAsync(reader, header.SectionId, RamSaver.SectionName).ConfigureAwait(false);
                    break;
                }

                case SectionType.Full:
                {
                    SectionHeader header = await SectionHeader.ReadFromAsync(reader, type).ConfigureAwait(false);
                    long lengthAt = reader.Position;
                    uint length = await reader.ReadBe32Async("device state length").ConfigureAwait(false);
                    _ = await reader.ReadBlobAsync(length, 1 << 20, lengthAt, "device state").ConfigureAwait(false);
                    await SectionFooter.ReadFromAsync(reader, header.SectionId, header.IdString ?? string.Empty).ConfigureAwait(false);
                    break;
                }

                case SectionType.Eof:
                    if (await reader.PeekU8Async("VMDESCRIPTION").ConfigureAwait(false) == (int)SectionType.VmDescription)
                    {
                        await reader.ReadSectionTypeAsync().ConfigureAwait(false);
                        await VmDescription.ReadFromAsync(reader).ConfigureAwait(false);
                    }

                    break;
                default:
                    throw new InvalidOperationException($"the warm-up stream holds an unexpected {type}");
            }
        }
    }

    private static byte[] WriteReturnPath()
    {
        var buffer = new ArrayBufferWriter<byte>(256);
        var writer = new MigrationStreamWriter(buffer);
        ReturnPathMessage.Pong(1).WriteTo(writer);
        ReturnPathMessage.ReqPagesId(0, RamBlock.TargetPageSize, GuestRam.MainBlockName).WriteTo(writer);
        ReturnPathMessage.ReqPages(RamBlock.TargetPageSize, RamBlock.TargetPageSize).WriteTo(writer);
        ReturnPathMessage.Shut(0).WriteTo(writer);
        return buffer.WrittenSpan.ToArray();
    }

    private static async ValueTask ReadReturnPathAsync(MigrationStreamReader reader)
    {
        while (!await reader.IsAtEndAsync().ConfigureAwait(false))
        {
            _ = await ReturnPathMessage.ReadFromAsync(reader).ConfigureAwait(false);
        }
    }
}
