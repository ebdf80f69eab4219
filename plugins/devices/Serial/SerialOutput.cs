namespace Modular.Devices.Serial;

/// <summary>
/// The transmit side of a serial port: keeps the last <see cref="TailCapacity"/> bytes in memory and
/// hands output to a writer thread, so the vCPU thread that writes THR never makes a syscall.
/// </summary>
/// <remarks>
/// Flushing: the writer thread writes as soon as a line is complete (a '\n'), when 4 KiB are pending,
/// or <see cref="PartialLineDelay"/> after the first byte of an unfinished line (a prompt still shows
/// promptly). When the sink cannot keep up and <see cref="MaxPending"/> bytes are pending, further
/// bytes are dropped and counted in <see cref="DroppedBytes"/> rather than stalling the guest, as a
/// real UART without flow control loses characters. A sink that fails is reported once on stderr and
/// in <see cref="SinkError"/>; later output is counted as dropped and still kept in the tail.
/// </remarks>
internal sealed class SerialOutput : IDisposable
{
    /// <summary>How many of the most recent bytes the tail keeps.</summary>
    public const int TailCapacity = 16 * 1024;

    private const int FlushThreshold = 4 * 1024;
    private const int MaxPending = 1024 * 1024;
    private static readonly TimeSpan PartialLineDelay = TimeSpan.FromMilliseconds(10);

    private readonly SerialSink _sink;
    private readonly string _deviceId;
    private readonly Action<ReadOnlyMemory<byte>> _onFlushed;
    private readonly object _gate = new();
    private readonly byte[] _tail = new byte[TailCapacity];
    private readonly Thread _writer;
    private long _tailWritten;            // total bytes ever written to the tail; guarded by _gate
    private byte[] _pending = new byte[FlushThreshold];
    private int _pendingCount;            // guarded by _gate
    private bool _pendingHasNewline;      // guarded by _gate
    private bool _closing;                // guarded by _gate
    private long _dropped;                // guarded by _gate
    private volatile Exception? _sinkError;

    /// <summary>Starts the writer thread for <paramref name="sink"/>.</summary>
    /// <param name="sink">Where output goes; owned by this object from now on.</param>
    /// <param name="deviceId">The device id, for the thread name and messages.</param>
    /// <param name="onFlushed">Called on the writer thread with each chunk after it reached the sink.</param>
    public SerialOutput(SerialSink sink, string deviceId, Action<ReadOnlyMemory<byte>> onFlushed)
    {
        _sink = sink;
        _deviceId = deviceId;
        _onFlushed = onFlushed;
        _writer = new Thread(WriterLoop) { IsBackground = true, Name = $"serial-out:{deviceId}" };
        _writer.Start();
    }

    /// <summary>Bytes dropped because the sink was too slow or failed.</summary>
    public long DroppedBytes { get { lock (_gate) { return _dropped; } } }

    /// <summary>Why the sink stopped taking output, or null.</summary>
    public Exception? SinkError => _sinkError;

    /// <summary>Queues one transmitted byte. vCPU thread; takes the output lock briefly, never blocks on I/O.</summary>
    public void Write(byte value)
    {
        lock (_gate)
        {
            _tail[_tailWritten % TailCapacity] = value;
            _tailWritten++;
            if (_sinkError is not null || _pendingCount >= MaxPending)
            {
                _dropped++;
                return;
            }

            if (_pendingCount == _pending.Length)
            {
                Array.Resize(ref _pending, Math.Min(_pending.Length * 2, MaxPending));
            }

            _pending[_pendingCount++] = value;
            bool wake = _pendingCount == 1 || _pendingCount == FlushThreshold || (value == (byte)'\n' && !_pendingHasNewline);
            _pendingHasNewline |= value == (byte)'\n';
            if (wake)
            {
                Monitor.Pulse(_gate);
            }
        }
    }

    /// <summary>A copy of the last bytes written (at most <see cref="TailCapacity"/>), oldest first. Any thread.</summary>
    public byte[] GetTail()
    {
        lock (_gate)
        {
            int length = (int)Math.Min(_tailWritten, TailCapacity);
            var copy = new byte[length];
            long start = _tailWritten - length;
            for (int i = 0; i < length; i++)
            {
                copy[i] = _tail[(start + i) % TailCapacity];
            }

            return copy;
        }
    }

    /// <summary>The writer thread: waits for output, gives an unfinished line a moment, writes outside the lock.</summary>
    private void WriterLoop()
    {
        byte[] spare = new byte[FlushThreshold];
        while (true)
        {
            byte[] chunk;
            int count;
            lock (_gate)
            {
                while (_pendingCount == 0 && !_closing)
                {
                    Monitor.Wait(_gate);
                }

                if (_pendingCount == 0)
                {
                    return; // closing and nothing left
                }

                if (!_pendingHasNewline && _pendingCount < FlushThreshold && !_closing)
                {
                    Monitor.Wait(_gate, PartialLineDelay);
                }

                chunk = _pending;
                count = _pendingCount;
                _pending = spare.Length >= FlushThreshold ? spare : new byte[FlushThreshold];
                _pendingCount = 0;
                _pendingHasNewline = false;
            }

            WriteToSink(chunk, count);
            spare = chunk.Length == FlushThreshold ? chunk : new byte[FlushThreshold];
        }
    }

    private void WriteToSink(byte[] chunk, int count)
    {
        if (_sink.Stream is { } stream && _sinkError is null)
        {
            try
            {
                stream.Write(chunk, 0, count);
                stream.Flush();
            }
            catch (Exception e) when (e is IOException or ObjectDisposedException or NotSupportedException)
            {
                _sinkError = e;
                lock (_gate) { _dropped += count; }
                Console.Error.WriteLine(
                    $"serial '{_deviceId}': writing to {_sink.Description} failed ({e.Message}); later output is dropped and kept only in the device's output tail.");
                return;
            }
        }

        _onFlushed(new ReadOnlyMemory<byte>(chunk, 0, count));
    }

    /// <summary>Writes what is pending, stops the writer thread and closes the sink.</summary>
    public void Dispose()
    {
        lock (_gate)
        {
            if (_closing) { return; }
            _closing = true;
            Monitor.PulseAll(_gate);
        }

        if (!_writer.Join(TimeSpan.FromSeconds(5)))
        {
            Console.Error.WriteLine($"serial '{_deviceId}': the output to {_sink.Description} did not drain within 5 s; closing it anyway.");
        }

        _sink.Dispose();
    }
}
