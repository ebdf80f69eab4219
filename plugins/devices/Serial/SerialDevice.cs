using System.Text;
using Modular.Abstractions.Devices;
using Modular.Abstractions.Memory;

namespace Modular.Devices.Serial;

/// <summary>
/// A 16550A UART on 8 I/O ports (THR/RBR, IER, IIR/FCR, LCR, MCR, LSR, MSR, SCR; DLL/DLM behind DLAB).
/// Transmit only: output goes to the configured sink and to an in-memory tail; there is no input
/// side and no interrupt line, so guests poll LSR (which always reports THR empty, 0x60).
/// MCR loopback works: bytes written to THR then come back in RBR.
/// </summary>
public sealed partial class SerialDevice : IDeviceModel
{
    private readonly object _lock = new();
    private readonly SerialOutput _output;
    private readonly ushort _base;
    private UartRegisters _regs = UartRegisters.Reset(); // guarded by _lock

    internal SerialDevice(string id, ushort basePort, uint instanceId, SerialSink sink)
    {
        Id = id;
        _base = basePort;
        Ports = [new IoPortRange(basePort, 8)];
        _output = new SerialOutput(sink, id, RaiseOutput);
        Migration = DeviceMigration.Migratable(new Section(this, instanceId));
    }

    /// <inheritdoc />
    public string Id { get; }

    /// <inheritdoc />
    public IReadOnlyList<IoPortRange> Ports { get; }

    /// <inheritdoc />
    public IReadOnlyList<MmioRange> Mmio { get; } = [];

    /// <inheritdoc />
    public DeviceMigration Migration { get; }

    /// <summary>
    /// Raised on the serial output thread with each chunk of output once it reached the sink. The
    /// memory is valid only during the call. A handler that throws is reported on stderr and ignored.
    /// </summary>
    public event Action<ReadOnlyMemory<byte>>? Output;

    /// <summary>The last bytes the guest transmitted (at most 16 KiB), oldest first. Any thread.</summary>
    public byte[] GetOutputTail() => _output.GetTail();

    /// <summary>The output tail as text (Latin-1, so every byte maps to one character). Any thread.</summary>
    public string OutputTail => Encoding.Latin1.GetString(_output.GetTail());

    /// <summary>Output bytes lost because the sink was too slow or failed (they are still in the tail).</summary>
    public long DroppedBytes => _output.DroppedBytes;

    /// <summary>Why the sink stopped taking output, or null while it works.</summary>
    public Exception? OutputError => _output.SinkError;

    /// <summary>Waits until <see cref="OutputTail"/> contains <paramref name="text"/>. Any thread (not a vCPU thread).</summary>
    /// <returns>True when the text appeared in time.</returns>
    public bool WaitForOutput(string text, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (!OutputTail.Contains(text, StringComparison.Ordinal))
        {
            if (DateTime.UtcNow >= deadline) { return false; }
            Thread.Sleep(5);
        }

        return true;
    }

    /// <summary>Guest IN; multi-byte accesses read consecutive registers, as QEMU splits them. vCPU thread.</summary>
    public void PortRead(ushort port, Span<byte> data)
    {
        lock (_lock)
        {
            for (int i = 0; i < data.Length; i++)
            {
                int offset = port - _base + i;
                data[i] = offset is >= 0 and < 8 ? ReadRegister(offset) : (byte)0xff;
            }
        }
    }

    /// <summary>Guest OUT; multi-byte accesses write consecutive registers. vCPU thread.</summary>
    public void PortWrite(ushort port, ReadOnlySpan<byte> data)
    {
        lock (_lock)
        {
            for (int i = 0; i < data.Length; i++)
            {
                int offset = port - _base + i;
                if (offset is >= 0 and < 8)
                {
                    WriteRegister(offset, data[i]);
                }
            }
        }
    }

    /// <summary>The UART has no MMIO; reads return 0xff.</summary>
    public void MmioRead(GuestPhysicalAddress address, Span<byte> data) => data.Fill(0xff);

    /// <summary>The UART has no MMIO; writes are ignored.</summary>
    public void MmioWrite(GuestPhysicalAddress address, ReadOnlySpan<byte> data) { }

    private byte ReadRegister(int offset)
    {
        bool dlab = (_regs.Lcr & UartRegisters.LcrDlab) != 0;
        switch (offset)
        {
            case UartRegisters.OffsetData when dlab:
                return (byte)_regs.Divisor;
            case UartRegisters.OffsetData:
                _regs.Lsr &= unchecked((byte)~UartRegisters.LsrDataReady);
                return _regs.Rbr;
            case UartRegisters.OffsetIer when dlab:
                return (byte)(_regs.Divisor >> 8);
            case UartRegisters.OffsetIer:
                return _regs.Ier;
            case UartRegisters.OffsetIir:
                byte iir = _regs.Iir;
                if ((iir & 0x0f) == UartRegisters.IirThrEmpty)
                {
                    _regs.ThrInterruptPending = false; // reading IIR acknowledges a THR-empty interrupt
                }

                return iir;
            case UartRegisters.OffsetLcr:
                return _regs.Lcr;
            case UartRegisters.OffsetMcr:
                return _regs.Mcr;
            case UartRegisters.OffsetLsr:
                return _regs.Lsr;
            case UartRegisters.OffsetMsr:
                return _regs.Msr;
            default:
                return _regs.Scr;
        }
    }

    private void WriteRegister(int offset, byte value)
    {
        bool dlab = (_regs.Lcr & UartRegisters.LcrDlab) != 0;
        switch (offset)
        {
            case UartRegisters.OffsetData when dlab:
                _regs.Divisor = (ushort)((_regs.Divisor & 0xff00) | value);
                break;
            case UartRegisters.OffsetData:
                Transmit(value);
                break;
            case UartRegisters.OffsetIer when dlab:
                _regs.Divisor = (ushort)((_regs.Divisor & 0x00ff) | (value << 8));
                break;
            case UartRegisters.OffsetIer:
                bool thrEnabledNow = (value & UartRegisters.IerThrEmpty) != 0 && (_regs.Ier & UartRegisters.IerThrEmpty) == 0;
                _regs.Ier = (byte)(value & UartRegisters.IerWritable);
                if (thrEnabledNow)
                {
                    _regs.ThrInterruptPending = true; // THR is empty, so enabling its interrupt raises it
                }

                break;
            case UartRegisters.OffsetIir:
                // Clearing the receive FIFO, or switching FIFO mode on or off, empties the receiver.
                if ((value & UartRegisters.FcrClearRx) != 0 || ((value ^ _regs.Fcr) & UartRegisters.FcrEnable) != 0)
                {
                    _regs.Lsr &= unchecked((byte)~UartRegisters.LsrDataReady);
                }

                _regs.Fcr = (byte)(value & UartRegisters.FcrStored);
                break;
            case UartRegisters.OffsetLcr:
                _regs.Lcr = value;
                break;
            case UartRegisters.OffsetMcr:
                _regs.Mcr = (byte)(value & UartRegisters.McrWritable);
                break;
            case UartRegisters.OffsetLsr:
            case UartRegisters.OffsetMsr:
                break; // factory-test writes: ignored, as QEMU does
            default:
                _regs.Scr = value;
                break;
        }
    }

    private void Transmit(byte value)
    {
        if ((_regs.Mcr & UartRegisters.McrLoop) != 0)
        {
            _regs.Rbr = value;
            _regs.Lsr |= UartRegisters.LsrDataReady;
        }
        else
        {
            _output.Write(value);
        }

        _regs.ThrInterruptPending = (_regs.Ier & UartRegisters.IerThrEmpty) != 0;
    }

    private void RaiseOutput(ReadOnlyMemory<byte> chunk)
    {
        try
        {
            Output?.Invoke(chunk);
        }
        catch (Exception e)
        {
            Console.Error.WriteLine($"serial '{Id}': an Output handler threw {e.GetType().Name}: {e.Message}");
        }
    }

    /// <summary>Drains pending output to the sink and closes it. Not while vCPUs run.</summary>
    public void Dispose() => _output.Dispose();
}
