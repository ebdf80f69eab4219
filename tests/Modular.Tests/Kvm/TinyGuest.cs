using System.Collections.Concurrent;
using Modular.Abstractions.Memory;
using Modular.Core.Kvm;
using Modular.Core.Memory;
using Modular.Core.Vcpus;

namespace Modular.Tests.Kvm;

/// <summary>Hand-assembled 32-bit protected-mode test guests (no paging, entered like a Multiboot kernel).</summary>
internal static class TinyGuest
{
    /// <summary>Where the code is placed.</summary>
    internal const uint CodeAddress = 0x1000;

    /// <summary>Where the counting guest stores its counter (page 5).</summary>
    internal const uint CounterAddress = 0x5000;

    /// <summary>The port the counting guest writes the low byte of its counter to.</summary>
    internal const ushort CounterPort = 0x10;

    /// <summary>
    /// Counts forever: <c>mov edi, 0x5000; xor eax, eax; l: inc eax; mov [edi], eax; out 0x10, al; jmp l</c>.
    /// </summary>
    internal static readonly byte[] Counter =
    [
        0xBF, 0x00, 0x50, 0x00, 0x00, // mov edi, 0x5000
        0x31, 0xC0,                   // xor eax, eax
        0x40,                         // l: inc eax
        0x89, 0x07,                   // mov [edi], eax
        0xE6, 0x10,                   // out 0x10, al
        0xEB, 0xF9,                   // jmp l
    ];

    /// <summary>
    /// Counts in RAM and never exits: <c>l: inc dword [0x5000]; jmp l</c>. Only the kick signal can
    /// get this vCPU out of KVM_RUN.
    /// </summary>
    internal static readonly byte[] SilentCounter =
    [
        0xFF, 0x05, 0x00, 0x50, 0x00, 0x00, // l: inc dword [0x5000]
        0xEB, 0xF8,                         // jmp l
    ];

    /// <summary>Where the string guest's message is.</summary>
    internal const uint MessageAddress = 0x2000;

    /// <summary>
    /// String I/O then HLT: <c>mov esi, 0x2000; mov ecx, 5; mov dx, 0x20; cld; rep outsb;
    /// in al, 0x21; out 0x22, al; hlt; jmp $</c>.
    /// </summary>
    internal static readonly byte[] StringIo =
    [
        0xBE, 0x00, 0x20, 0x00, 0x00, // mov esi, 0x2000
        0xB9, 0x05, 0x00, 0x00, 0x00, // mov ecx, 5
        0x66, 0xBA, 0x20, 0x00,       // mov dx, 0x20
        0xFC,                         // cld
        0xF3, 0x6E,                   // rep outsb
        0xE4, 0x21,                   // in al, 0x21
        0xE6, 0x22,                   // out 0x22, al
        0xF4,                         // hlt
        0xEB, 0xFE,                   // jmp $
    ];

    /// <summary>Opens KVM or makes the test inconclusive with the reason.</summary>
    internal static KvmSystem OpenKvmOrSkip()
    {
        try
        {
            return KvmSystem.Open();
        }
        catch (KvmUnavailableException e)
        {
            Assert.Inconclusive(e.Message);
            throw;
        }
    }
}

/// <summary>A VM with 1 MiB of RAM (dirty-logged), one vCPU at the test code, and a recording exit handler.</summary>
internal sealed class TinyMachine : IDisposable
{
    internal TinyMachine(KvmSystem kvm, byte[] code, ulong ramSize = 1 << 20)
    {
        Vm = kvm.CreateVm();
        Ram = GuestRam.Create(ramSize);
        Vm.MapRam(Ram, logDirty: true);
        if (code.Length > 0)
        {
            Ram.Write(new GuestPhysicalAddress(TinyGuest.CodeAddress), code);
            Vcpu = Vm.CreateVcpu(0);
            Vcpu.SetMultibootEntry(TinyGuest.CodeAddress, 0x9000);
        }
        else
        {
            Vcpu = Vm.CreateVcpu(0);
        }

        Thread = new VcpuThread(Vcpu, Handler);
    }

    internal KvmVm Vm { get; }

    internal GuestRam Ram { get; }

    internal KvmVcpu Vcpu { get; }

    internal RecordingExitHandler Handler { get; } = new();

    internal VcpuThread Thread { get; }

    internal uint ReadCounter()
    {
        Span<byte> value = stackalloc byte[4];
        Ram.Read(new GuestPhysicalAddress(TinyGuest.CounterAddress), value);
        return BitConverter.ToUInt32(value);
    }

    public void Dispose()
    {
        Thread.Dispose();
        Vcpu.Dispose();
        Vm.Dispose();
        Ram.Dispose();
    }
}

/// <summary>Records every exit; answers IN with <see cref="InValue"/>.</summary>
internal sealed class RecordingExitHandler : IVcpuExitHandler
{
    private long _portWrites;

    internal ConcurrentQueue<(ushort Port, byte[] Data)> Outs { get; } = new();

    internal byte InValue { get; set; } = 0x5A;

    internal List<ushort> InPorts { get; } = [];

    internal long PortWrites => Interlocked.Read(ref _portWrites);

    internal volatile int LastCounterByte = -1;

    /// <summary>The first counter byte seen, or -1.</summary>
    internal volatile int FirstCounterByte = -1;

    internal ManualResetEventSlim Halted { get; } = new();

    internal ManualResetEventSlim ShutDown { get; } = new();

    internal string? ShutdownReason { get; private set; }

    internal bool KeepOuts { get; set; } = true;

    public void PortIn(ushort port, Span<byte> data)
    {
        InPorts.Add(port);
        data.Fill(InValue);
    }

    public void PortOut(ushort port, ReadOnlySpan<byte> data)
    {
        Interlocked.Increment(ref _portWrites);
        if (port == TinyGuest.CounterPort)
        {
            if (FirstCounterByte < 0)
            {
                FirstCounterByte = data[0];
            }

            LastCounterByte = data[0];
        }

        if (KeepOuts && Outs.Count < 10_000)
        {
            Outs.Enqueue((port, data.ToArray()));
        }
    }

    public void MmioRead(GuestPhysicalAddress address, Span<byte> data) => data.Fill(0xFF);

    public void MmioWrite(GuestPhysicalAddress address, ReadOnlySpan<byte> data)
    {
    }

    public void OnHalt(int vcpu) => Halted.Set();

    public void OnShutdown(int vcpu, string reason)
    {
        ShutdownReason = reason;
        ShutDown.Set();
    }
}
