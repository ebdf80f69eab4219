using System.Buffers;
using System.IO.Pipelines;
using Modular.Core.Migration.Stream;

namespace Modular.Tests.Migration.Stream;

/// <summary>Writes records into memory and reads them back through a real pipe.</summary>
internal static class StreamTestPipes
{
    public static byte[] Write(Action<MigrationStreamWriter> write)
    {
        var buffer = new ArrayBufferWriter<byte>();
        var writer = new MigrationStreamWriter(buffer);
        write(writer);
        Assert.AreEqual(buffer.WrittenCount, writer.Position, "Position counts every byte written");
        return buffer.WrittenSpan.ToArray();
    }

    /// <summary>A reader over <paramref name="bytes"/> delivered in chunks of <paramref name="chunk"/> bytes, so slow paths run too.</summary>
    public static MigrationStreamReader Reader(byte[] bytes, int chunk = int.MaxValue, StreamLimits? limits = null)
    {
        var pipe = new Pipe(new PipeOptions(pauseWriterThreshold: 0));
        for (int i = 0; i < bytes.Length; i += chunk)
        {
            int n = Math.Min(chunk, bytes.Length - i);
            pipe.Writer.Write(bytes.AsSpan(i, n));
            pipe.Writer.FlushAsync().AsTask().GetAwaiter().GetResult();
        }

        pipe.Writer.Complete();
        return new MigrationStreamReader(pipe.Reader, limits);
    }
}
