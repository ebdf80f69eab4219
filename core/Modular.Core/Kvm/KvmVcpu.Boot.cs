using Modular.Core.Interop;

namespace Modular.Core.Kvm;

/// <summary>Initial register state for entering a guest.</summary>
public sealed partial class KvmVcpu
{
    /// <summary>The value a Multiboot v1 loader leaves in EAX.</summary>
    public const uint MultibootBootloaderMagic = 0x2BADB002;

    /// <summary>
    /// Puts the vCPU in 32-bit flat protected mode at a Multiboot entry point, the way QEMU's
    /// <c>-kernel</c> does (KVM-NOTES steps 8-9): every segment attribute is set (setting only base
    /// and limit leaves db=0, g=0 from reset and the guest triple-faults), CR0 = PE|ET, paging off,
    /// EAX = 0x2BADB002, EBX = the Multiboot info address, EFLAGS = 0x2. Call before the first run.
    /// </summary>
    /// <param name="entry">The entry point (physical address).</param>
    /// <param name="multibootInfo">Where the Multiboot info structure is in guest RAM.</param>
    public void SetMultibootEntry(uint entry, uint multibootInfo)
    {
        KvmSregs sregs = GetSregs(); // keeps TR, LDT and the APIC base from reset
        KvmSegment code = FlatSegment(selector: 0x10, type: 0xB);
        KvmSegment data = FlatSegment(selector: 0x18, type: 0x3);
        sregs.Cs = code;
        sregs.Ds = data;
        sregs.Es = data;
        sregs.Fs = data;
        sregs.Gs = data;
        sregs.Ss = data;
        sregs.Cr0 = 0x11; // PE | ET
        sregs.Cr4 = 0;
        sregs.Efer = 0;
        SetSregs(sregs);

        var regs = new KvmRegs
        {
            Rflags = 0x2,
            Rip = entry,
            Rax = MultibootBootloaderMagic,
            Rbx = multibootInfo,
        };
        SetRegs(regs);
    }

    private static KvmSegment FlatSegment(ushort selector, byte type) => new()
    {
        Base = 0,
        Limit = 0xFFFFFFFF,
        Selector = selector,
        Type = type,
        S = 1,
        Present = 1,
        Dpl = 0,
        Db = 1,
        G = 1,
        L = 0,
        Avl = 0,
        Unusable = 0,
    };
}
