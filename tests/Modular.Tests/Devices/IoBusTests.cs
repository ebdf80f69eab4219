using Microsoft.Extensions.Logging;
using Modular.Abstractions.Devices;
using Modular.Abstractions.Memory;
using Modular.Core.Devices;

namespace Modular.Tests.Devices;

[TestClass]
public sealed class IoBusTests
{
    /// <summary>A device that records every access it gets and answers reads with a fixed byte.</summary>
    private sealed class RecordingDevice(string id, IoPortRange[] ports, MmioRange[]? mmio = null, byte answer = 0x5a) : IDeviceModel
    {
        public List<string> Accesses { get; } = new();
        public string Id => id;
        public IReadOnlyList<IoPortRange> Ports => ports;
        public IReadOnlyList<MmioRange> Mmio => mmio ?? [];
        public DeviceMigration Migration { get; } = DeviceMigration.Unmigratable("test double");

        public void PortRead(ushort port, Span<byte> data) { Record($"in 0x{port:x}/{data.Length}"); data.Fill(answer); }
        public void PortWrite(ushort port, ReadOnlySpan<byte> data) => Record($"out 0x{port:x}={Convert.ToHexString(data)}");
        public void MmioRead(GuestPhysicalAddress address, Span<byte> data) { Record($"read {address}/{data.Length}"); data.Fill(answer); }
        public void MmioWrite(GuestPhysicalAddress address, ReadOnlySpan<byte> data) => Record($"write {address}={Convert.ToHexString(data)}");
        public void Dispose() { }

        private void Record(string access) { lock (Accesses) { Accesses.Add(access); } }
    }

    private sealed class ListLogger : ILogger<IoBus>
    {
        public List<(LogLevel Level, string Message)> Entries { get; } = new();
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
        public bool IsEnabled(LogLevel logLevel) => true;
        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            Entries.Add((logLevel, formatter(state, exception)));
    }

    private static MmioRange Mmio(ulong start, ulong length) => new(new GuestPhysicalAddress(start), length);

    [TestMethod]
    public void PortAccessesGoToTheOwningDeviceOnly()
    {
        var bus = new IoBus();
        var a = new RecordingDevice("a", [new IoPortRange(0x3f8, 8)], answer: 0x11);
        var b = new RecordingDevice("b", [new IoPortRange(0x60, 1), new IoPortRange(0x64, 1)], answer: 0x22);
        bus.Add(a);
        bus.Add(b);

        Span<byte> data = stackalloc byte[2];
        bus.PortIn(0x3fd, data);
        Assert.AreEqual(0x11, data[0]);
        bus.PortOut(0x64, [0xfe]);
        bus.PortIn(0x60, data[..1]);
        Assert.AreEqual(0x22, data[0]);

        CollectionAssert.AreEqual(new[] { "in 0x3fd/2" }, a.Accesses);
        CollectionAssert.AreEqual(new[] { "out 0x64=FE", "in 0x60/1" }, b.Accesses);
        Assert.AreSame(b, bus.FindPortOwner(0x64));
        Assert.IsNull(bus.FindPortOwner(0x61));
        CollectionAssert.AreEqual(new IDeviceModel[] { a, b }, bus.Devices.ToArray());
    }

    [TestMethod]
    public void MmioAccessesGoToTheOwningDevice()
    {
        var bus = new IoBus();
        var low = new RecordingDevice("low", [], [Mmio(0xfee00000, 0x1000)]);
        var high = new RecordingDevice("high", [], [Mmio(0xfed00000, 0x400), Mmio(0xfef00000, 0x10)]);
        bus.Add(low);
        bus.Add(high);

        Span<byte> data = stackalloc byte[4];
        bus.MmioRead(new GuestPhysicalAddress(0xfee00ffc), data);
        bus.MmioWrite(new GuestPhysicalAddress(0xfef0000f), [1]);
        bus.MmioWrite(new GuestPhysicalAddress(0xfed00000), [2]);

        CollectionAssert.AreEqual(new[] { "read 0xfee00ffc/4" }, low.Accesses);
        CollectionAssert.AreEqual(new[] { "write 0xfef0000f=01", "write 0xfed00000=02" }, high.Accesses);
        Assert.IsNull(bus.FindMmioOwner(new GuestPhysicalAddress(0xfee01000)));
        Assert.IsNull(bus.FindMmioOwner(new GuestPhysicalAddress(0xfef00010)));
    }

    [TestMethod]
    public void OverlappingPortsAreRefusedNamingBothDevicesAndTheRange()
    {
        var bus = new IoBus();
        bus.Add(new RecordingDevice("com1", [new IoPortRange(0x3f8, 8)]));
        var clash = new RecordingDevice("dbg", [new IoPortRange(0x3fc, 2)]);

        var e = Assert.ThrowsExactly<IoBusAttachException>(() => bus.Add(clash));
        StringAssert.Contains(e.Message, "'dbg'");
        StringAssert.Contains(e.Message, "'com1'");
        StringAssert.Contains(e.Message, "0x3fc-0x3fd");
        StringAssert.Contains(e.Message, "0x3f8-0x3ff");
        Assert.AreEqual(1, bus.Devices.Count, "a refused device is not half-added");
        Assert.AreEqual("com1", bus.FindPortOwner(0x3fc)?.Id);
    }

    [TestMethod]
    public void OverlappingMmioIsRefusedNamingBothDevices()
    {
        var bus = new IoBus();
        bus.Add(new RecordingDevice("hpet", [], [Mmio(0xfed00000, 0x400)]));
        var e = Assert.ThrowsExactly<IoBusAttachException>(() => bus.Add(new RecordingDevice("x", [], [Mmio(0xfed003ff, 2)])));
        StringAssert.Contains(e.Message, "'x'");
        StringAssert.Contains(e.Message, "'hpet'");
        StringAssert.Contains(e.Message, "0xfed00000-0xfed003ff");
    }

    [TestMethod]
    public void SelfOverlapEmptyRangesAndDuplicateIdsAreRefused()
    {
        var bus = new IoBus();
        StringAssert.Contains(Assert.ThrowsExactly<IoBusAttachException>(
            () => bus.Add(new RecordingDevice("twice", [new IoPortRange(0x70, 2), new IoPortRange(0x71, 1)]))).Message, "overlap each other");
        StringAssert.Contains(Assert.ThrowsExactly<IoBusAttachException>(
            () => bus.Add(new RecordingDevice("empty", [new IoPortRange(0x80, 0)]))).Message, "empty");
        StringAssert.Contains(Assert.ThrowsExactly<IoBusAttachException>(
            () => bus.Add(new RecordingDevice("end", [new IoPortRange(0xfffe, 4)]))).Message, "past port 0xffff");
        StringAssert.Contains(Assert.ThrowsExactly<IoBusAttachException>(
            () => bus.Add(new RecordingDevice("m", [], [Mmio(0x1000, 0x100), Mmio(0x10ff, 1)]))).Message, "its own MMIO range");

        bus.Add(new RecordingDevice("dev", [new IoPortRange(0x90, 1)]));
        var e = Assert.ThrowsExactly<IoBusAttachException>(() => bus.Add(new RecordingDevice("dev", [new IoPortRange(0x91, 1)])));
        StringAssert.Contains(e.Message, "'dev' is already on the bus");
        Assert.AreEqual(1, bus.Devices.Count);
        Assert.IsNull(bus.FindPortOwner(0x70), "a refused device left no ports behind");
    }

    [TestMethod]
    public void UnclaimedAccessesFloatHighAreCountedAndLoggedOncePerPort()
    {
        var logger = new ListLogger();
        var bus = new IoBus(logger);
        bus.Add(new RecordingDevice("a", [new IoPortRange(0x3f8, 8)]));

        Span<byte> data = stackalloc byte[4];
        bus.PortIn(0x80, data);
        CollectionAssert.AreEqual(new byte[] { 0xff, 0xff, 0xff, 0xff }, data.ToArray());
        bus.PortOut(0x80, [1]);
        bus.PortOut(0x80, [2]);
        bus.PortOut(0x81, [3]);
        data.Clear();
        bus.MmioRead(new GuestPhysicalAddress(0xd0000000), data);
        CollectionAssert.AreEqual(new byte[] { 0xff, 0xff, 0xff, 0xff }, data.ToArray());
        bus.MmioWrite(new GuestPhysicalAddress(0xd0000000), [1]);

        Assert.AreEqual(4, bus.UnclaimedPortAccesses);
        Assert.AreEqual(2, bus.UnclaimedMmioAccesses);
        Assert.AreEqual(3, logger.Entries.Count, string.Join(" | ", logger.Entries));
        Assert.IsTrue(logger.Entries.All(e => e.Level == LogLevel.Debug));
        StringAssert.Contains(logger.Entries[0].Message, "0x80");
        StringAssert.Contains(logger.Entries[1].Message, "0x81");
        StringAssert.Contains(logger.Entries[2].Message, "0xd0000000");
    }

    [TestMethod]
    public void ConcurrentVcpuThreadsAllReachTheirDevices()
    {
        var bus = new IoBus();
        var devices = Enumerable.Range(0, 4).Select(i => new RecordingDevice($"d{i}", [new IoPortRange((ushort)(0x100 + (i * 8)), 8)])).ToArray();
        foreach (RecordingDevice d in devices) { bus.Add(d); }

        Parallel.For(0, 4, i =>
        {
            for (int n = 0; n < 1000; n++) { bus.PortOut((ushort)(0x100 + (i * 8) + (n % 8)), [(byte)n]); }
        });

        Assert.IsTrue(devices.All(d => d.Accesses.Count == 1000));
        Assert.AreEqual(0, bus.UnclaimedPortAccesses);
    }
}
