namespace Modular.Devices.Serial;

/// <summary>
/// The register file of a 16550A UART, as plain data: the device mutates it under its lock, and a
/// savevm load builds a new one, validates it, and only then swaps it in.
/// </summary>
internal struct UartRegisters
{
    // Register offsets from the base port.
    public const int OffsetData = 0, OffsetIer = 1, OffsetIir = 2, OffsetLcr = 3, OffsetMcr = 4, OffsetLsr = 5, OffsetMsr = 6, OffsetScr = 7;

    public const byte IerRxData = 0x01, IerThrEmpty = 0x02, IerWritable = 0x0f;
    public const byte IirNoInterrupt = 0x01, IirThrEmpty = 0x02, IirRxData = 0x04, IirFifoEnabled = 0xc0;
    public const byte FcrEnable = 0x01, FcrClearRx = 0x02, FcrClearTx = 0x04, FcrDmaMode = 0x08, FcrTrigger = 0xc0;
    public const byte FcrStored = FcrEnable | FcrDmaMode | FcrTrigger;
    public const byte LcrDlab = 0x80;
    public const byte McrLoop = 0x10, McrWritable = 0x1f;
    public const byte LsrDataReady = 0x01, LsrThrEmpty = 0x20, LsrTransmitterEmpty = 0x40;
    public const byte LsrPossible = LsrDataReady | LsrThrEmpty | LsrTransmitterEmpty;

    /// <summary>The last received byte (only loopback receives: there is no input side).</summary>
    public byte Rbr;
    public byte Ier;
    public byte Fcr;
    public byte Lcr;
    public byte Mcr;

    /// <summary>THR is always empty (output never waits), so only Data Ready changes.</summary>
    public byte Lsr;
    public byte Scr;

    /// <summary>The baud-rate divisor latch (DLM:DLL).</summary>
    public ushort Divisor;

    /// <summary>A THR-empty interrupt is pending (cleared by reading IIR or writing THR).</summary>
    public bool ThrInterruptPending;

    /// <summary>After reset: 8N1 at 9600 baud (divisor 12), no interrupts, THR empty.</summary>
    public static UartRegisters Reset() => new()
    {
        Lcr = 0x03,
        Divisor = 12,
        Lsr = LsrThrEmpty | LsrTransmitterEmpty,
    };

    /// <summary>
    /// MSR derives from MCR: in loopback the outputs feed the inputs (RTS->CTS, DTR->DSR, OUT1->RI,
    /// OUT2->DCD); otherwise the line is idle with carrier, as QEMU reports for a chardev without
    /// modem control (DCD|DSR|CTS). The delta bits stay 0 because no input line ever changes.
    /// </summary>
    public readonly byte Msr => (Mcr & McrLoop) != 0
        ? (byte)(((Mcr & 0x02) << 3) | ((Mcr & 0x01) << 5) | ((Mcr & 0x04) << 4) | ((Mcr & 0x08) << 4))
        : (byte)0xb0;

    /// <summary>IIR as the guest reads it: the highest-priority pending source, with the FIFO bits.</summary>
    public readonly byte Iir
    {
        get
        {
            byte id = (Ier & IerRxData) != 0 && (Lsr & LsrDataReady) != 0 ? IirRxData
                : (Ier & IerThrEmpty) != 0 && ThrInterruptPending ? IirThrEmpty
                : IirNoInterrupt;
            return (byte)(id | ((Fcr & FcrEnable) != 0 ? IirFifoEnabled : 0));
        }
    }
}
