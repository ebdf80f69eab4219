using Modular.Devices.Serial;
using Modular.Devices.Tests.Doubles;
using static Modular.Devices.Tests.Doubles.DeviceTesting;

namespace Modular.Devices.Tests.Serial;

[TestClass]
public sealed class SerialRegisterTests
{
    private const int Base = 0x3f8;

    private static SerialDevice NewSerial() =>
        (SerialDevice)new SerialFactory().Create(ConfigOf("serial", ("output", "null")), new TestDeviceContext());

    [TestMethod]
    public void ClaimsEightPortsAtTheDefaultBase()
    {
        using SerialDevice serial = NewSerial();
        Assert.AreEqual(new Modular.Abstractions.Devices.IoPortRange(0x3f8, 8), serial.Ports.Single());
        Assert.AreEqual(0, serial.Mmio.Count);
    }

    [TestMethod]
    public void LsrReportsTransmitterEmptySoPolledGuestsPrint()
    {
        using SerialDevice serial = NewSerial();
        Assert.AreEqual(0x60, In8(serial, Base + 5));
        Out8(serial, Base, (byte)'A');
        Assert.AreEqual(0x60, In8(serial, Base + 5));
    }

    [TestMethod]
    public void TransmittedBytesReachTheTail()
    {
        using SerialDevice serial = NewSerial();
        Out8(serial, Base, (byte)'A');
        Out8(serial, Base, (byte)'B');
        Assert.AreEqual("AB", serial.OutputTail);
        CollectionAssert.AreEqual("AB"u8.ToArray(), serial.GetOutputTail());
    }

    [TestMethod]
    public void DlabSwitchesOffsetsZeroAndOneToTheDivisorLatch()
    {
        using SerialDevice serial = NewSerial();
        Assert.AreEqual(0x03, In8(serial, Base + 3), "reset LCR is 8N1");

        Out8(serial, Base + 3, 0x83);           // DLAB on
        Assert.AreEqual(12, In8(serial, Base)); // reset divisor: 9600 baud
        Out8(serial, Base, 0x01);               // DLL
        Out8(serial, Base + 1, 0x02);           // DLM
        Assert.AreEqual(0x01, In8(serial, Base));
        Assert.AreEqual(0x02, In8(serial, Base + 1));
        Assert.AreEqual("", serial.OutputTail, "a DLL write transmits nothing");

        Out8(serial, Base + 3, 0x03);           // DLAB off
        Assert.AreEqual(0x00, In8(serial, Base + 1), "IER is still 0, the DLM write did not reach it");
        Out8(serial, Base, (byte)'x');
        Assert.AreEqual("x", serial.OutputTail);

        Out8(serial, Base + 3, 0x83);
        Assert.AreEqual(0x01, In8(serial, Base), "the THR write did not touch the divisor");
    }

    [TestMethod]
    public void IerKeepsOnlyItsFourDefinedBits()
    {
        using SerialDevice serial = NewSerial();
        Out8(serial, Base + 1, 0xff);
        Assert.AreEqual(0x0f, In8(serial, Base + 1));
    }

    [TestMethod]
    public void ScratchRegisterHoldsAnyByte()
    {
        using SerialDevice serial = NewSerial();
        Out8(serial, Base + 7, 0xa5);
        Assert.AreEqual(0xa5, In8(serial, Base + 7));
        Out8(serial, Base + 7, 0x5a);
        Assert.AreEqual(0x5a, In8(serial, Base + 7));
    }

    [TestMethod]
    public void IirReportsFifoAndAThrEmptyInterruptUntilRead()
    {
        using SerialDevice serial = NewSerial();
        Assert.AreEqual(0x01, In8(serial, Base + 2), "no interrupt pending");
        Out8(serial, Base + 2, 0x07);   // FCR: enable and clear FIFOs
        Assert.AreEqual(0xc1, In8(serial, Base + 2));
        Out8(serial, Base + 1, 0x02);   // IER: THR empty
        Assert.AreEqual(0xc2, In8(serial, Base + 2));
        Assert.AreEqual(0xc1, In8(serial, Base + 2), "reading IIR acknowledged the THR-empty interrupt");
        Out8(serial, Base, (byte)'z');
        Assert.AreEqual(0xc2, In8(serial, Base + 2), "THR empty again after a transmit");
    }

    [TestMethod]
    public void LoopbackReturnsTransmittedBytesInRbrAndMirrorsMcrInMsr()
    {
        using SerialDevice serial = NewSerial();
        Assert.AreEqual(0xb0, In8(serial, Base + 6), "idle line with carrier");
        Out8(serial, Base + 4, 0x1f);   // loopback, OUT2, OUT1, RTS, DTR
        Assert.AreEqual(0xf0, In8(serial, Base + 6));
        Out8(serial, Base + 4, 0x12);   // loopback + RTS only -> CTS
        Assert.AreEqual(0x10, In8(serial, Base + 6));

        Out8(serial, Base, (byte)'q');
        Assert.AreEqual(0x61, In8(serial, Base + 5), "data ready");
        Assert.AreEqual((byte)'q', In8(serial, Base));
        Assert.AreEqual(0x60, In8(serial, Base + 5), "reading RBR cleared data ready");
        Assert.AreEqual("", serial.OutputTail, "loopback bytes do not leave the UART");
    }

    [TestMethod]
    public void MultiByteAccessesTouchConsecutiveRegisters()
    {
        using SerialDevice serial = NewSerial();
        serial.PortWrite(Base + 6, [0x11, 0x22]); // MSR (ignored), SCR
        Assert.AreEqual(0x22, In8(serial, Base + 7));
    }

    [TestMethod]
    public void TailKeepsTheLast16KiB()
    {
        using SerialDevice serial = NewSerial();
        for (int i = 0; i < 20_000; i++)
        {
            Out8(serial, Base, (byte)('a' + (i % 26)));
        }

        byte[] tail = serial.GetOutputTail();
        Assert.AreEqual(16 * 1024, tail.Length);
        Assert.AreEqual((byte)('a' + (19_999 % 26)), tail[^1]);
        Assert.AreEqual((byte)('a' + ((20_000 - 16 * 1024) % 26)), tail[0]);
    }

    [TestMethod]
    public void OutputEventDeliversFlushedChunks()
    {
        using SerialDevice serial = NewSerial();
        var seen = new System.Text.StringBuilder();
        using var got = new ManualResetEventSlim();
        serial.Output += chunk =>
        {
            lock (seen) { seen.Append(System.Text.Encoding.ASCII.GetString(chunk.Span)); if (seen.ToString().Contains("B\n")) { got.Set(); } }
        };
        foreach (char c in "A B\n") { Out8(serial, Base, (byte)c); }
        Assert.IsTrue(got.Wait(TimeSpan.FromSeconds(5)), "Output was raised");
        lock (seen) { Assert.AreEqual("A B\n", seen.ToString()); }
    }

    [TestMethod]
    public void WaitForOutputSeesTextAndTimesOutOtherwise()
    {
        using SerialDevice serial = NewSerial();
        foreach (char c in "boot ok") { Out8(serial, Base, (byte)c); }
        Assert.IsTrue(serial.WaitForOutput("ok", TimeSpan.FromSeconds(1)));
        Assert.IsFalse(serial.WaitForOutput("panic", TimeSpan.FromMilliseconds(50)));
    }
}
