using Modular.Core.Interop;
using Modular.Core.Vcpus;

namespace Modular.Tests.Kvm;

[TestClass]
public sealed class VcpuStateFormatTests
{
    private static VcpuState Sample()
    {
        var xsave = new byte[4096];
        xsave[4095] = 0xEE;
        return new VcpuState
        {
            VcpuId = 3,
            Cpuid = [new KvmCpuidEntry2 { Function = 1, Eax = 0x906ED }],
            Regs = new KvmRegs { Rip = 0x1007, Rax = 42, R15 = ulong.MaxValue },
            Sregs = new KvmSregs { Cr0 = 0x11, Cs = new KvmSegment { Selector = 0x10, Db = 1, G = 1 } },
            Xsave = xsave,
            Xcrs = new KvmXcrs { NrXcrs = 1 },
            Msrs = [new KvmMsrEntry { Index = 0x10, Data = 12345 }, new KvmMsrEntry { Index = 0x174, Data = 8 }],
            MpState = new KvmMpState { MpState = 0 },
            Events = new KvmVcpuEvents { Flags = 4 },
        };
    }

    [TestMethod]
    public void RoundTripsThroughSpanAndStream()
    {
        VcpuState state = Sample();
        byte[] bytes = new byte[state.SerializedSize];
        Assert.AreEqual(bytes.Length, state.WriteTo(bytes));

        VcpuState back = VcpuState.ReadFrom(bytes);
        Assert.AreEqual(3, back.VcpuId);
        Assert.AreEqual(0x1007UL, back.Regs.Rip);
        Assert.AreEqual(ulong.MaxValue, back.Regs.R15);
        Assert.AreEqual((ushort)0x10, back.Sregs.Cs.Selector);
        Assert.AreEqual(0xEE, back.Xsave[4095]);
        Assert.AreEqual(12345UL, back.Msrs[0].Data);
        Assert.AreEqual(0x906EDU, back.Cpuid[0].Eax);

        using var stream = new MemoryStream();
        back.WriteTo(stream);
        CollectionAssert.AreEqual(bytes, stream.ToArray());
        stream.Position = 0;
        Assert.AreEqual(0x1007UL, VcpuState.ReadFrom(stream).Regs.Rip);
    }

    [TestMethod]
    public void TruncatedDataNamesThePartAndOffset()
    {
        VcpuState state = Sample();
        byte[] bytes = new byte[state.SerializedSize];
        state.WriteTo(bytes);

        var header = Assert.ThrowsExactly<VcpuStateFormatException>(() => VcpuState.ReadFrom(bytes.AsSpan(0, 10)));
        Assert.AreEqual("vCPU state is truncated: the header needs 16 bytes, only 10 are there.", header.Message);

        var body = Assert.ThrowsExactly<VcpuStateFormatException>(() => VcpuState.ReadFrom(bytes.AsSpan(0, 200)));
        Assert.AreEqual($"vCPU state is truncated: the header says {bytes.Length} bytes, only 200 are there.", body.Message);

        using var stream = new MemoryStream(bytes, 0, 300);
        var fromStream = Assert.ThrowsExactly<VcpuStateFormatException>(() => VcpuState.ReadFrom(stream));
        StringAssert.StartsWith(fromStream.Message, "vCPU state is truncated");
    }

    [TestMethod]
    public void WrongMagicVersionOrPartSizeIsRefused()
    {
        VcpuState state = Sample();
        byte[] bytes = new byte[state.SerializedSize];
        state.WriteTo(bytes);

        byte[] badMagic = (byte[])bytes.Clone();
        badMagic[0] = (byte)'X';
        StringAssert.Contains(Assert.ThrowsExactly<VcpuStateFormatException>(() => VcpuState.ReadFrom(badMagic)).Message, "this is not vCPU state");

        byte[] badVersion = (byte[])bytes.Clone();
        badVersion[4] = 9;
        Assert.AreEqual("vCPU state has format version 9; this build reads version 1 only.", Assert.ThrowsExactly<VcpuStateFormatException>(() => VcpuState.ReadFrom(badVersion)).Message);

        // the regs part follows the header (16) and the cpuid part (5 + 40): make its length 143
        byte[] badRegs = (byte[])bytes.Clone();
        badRegs[16 + 45 + 1] = 143;
        var error = Assert.ThrowsExactly<VcpuStateFormatException>(() => VcpuState.ReadFrom(badRegs));
        Assert.AreEqual("vCPU 3 state part 'regs' at offset 61 is 143 bytes; it must be 144.", error.Message);
    }
}
