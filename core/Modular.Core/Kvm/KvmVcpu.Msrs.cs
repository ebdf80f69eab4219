using Modular.Core.Interop;

namespace Modular.Core.Kvm;

/// <summary>MSR access (KVM_GET_MSRS / KVM_SET_MSRS), tolerant of MSRs this vCPU cannot take.</summary>
public sealed unsafe partial class KvmVcpu
{
    /// <summary>
    /// KVM_GET_MSRS for <paramref name="indices"/>. KVM stops at the first MSR it cannot read and
    /// returns how many it did; such an MSR is left out of the result and reading goes on after it.
    /// </summary>
    public KvmMsrEntry[] GetMsrs(ReadOnlySpan<uint> indices)
    {
        var entries = new KvmMsrEntry[indices.Length];
        for (int i = 0; i < indices.Length; i++)
        {
            entries[i].Index = indices[i];
        }

        var read = new List<KvmMsrEntry>(indices.Length);
        int start = 0;
        while (start < entries.Length)
        {
            int done = TransferMsrs(KvmIoctls.GetMsrs, entries.AsSpan(start), "KVM_GET_MSRS");
            read.AddRange(entries.AsSpan(start, done));
            start += done + 1; // skip the MSR KVM refused, if any
        }

        return read.ToArray();
    }

    /// <summary>
    /// KVM_SET_MSRS. KVM stops at the first MSR it refuses (without an in-kernel LAPIC that is the
    /// async-PF interrupt MSR 0x4b564d06, see KVM-NOTES) and returns a partial count: that MSR is
    /// skipped and the rest are still set. Returns the indices that were skipped.
    /// </summary>
    public IReadOnlyList<uint> SetMsrs(ReadOnlySpan<KvmMsrEntry> entries)
    {
        var skipped = new List<uint>();
        KvmMsrEntry[] copy = entries.ToArray();
        int start = 0;
        while (start < copy.Length)
        {
            int done = TransferMsrs(KvmIoctls.SetMsrs, copy.AsSpan(start), "KVM_SET_MSRS");
            if (start + done < copy.Length)
            {
                skipped.Add(copy[start + done].Index);
            }

            start += done + 1;
        }

        return skipped;
    }

    private int TransferMsrs(nuint request, Span<KvmMsrEntry> entries, string name)
    {
        int bytes = sizeof(KvmMsrsHeader) + (entries.Length * sizeof(KvmMsrEntry));
        byte[] buffer = new byte[bytes];
        fixed (byte* msrs = buffer)
        {
            ((KvmMsrsHeader*)msrs)->Nmsrs = (uint)entries.Length;
            var body = new Span<KvmMsrEntry>(msrs + sizeof(KvmMsrsHeader), entries.Length);
            entries.CopyTo(body);
            // SAFETY: msrs is a pinned kvm_msrs header followed by nmsrs entries.
            int done = KvmCall.Checked(_fd, request, msrs, $"{name} on vCPU {Id} ({entries.Length} MSRs from 0x{entries[0].Index:x})");
            body.CopyTo(entries);
            return done;
        }
    }
}
