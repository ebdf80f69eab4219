using System.Runtime.InteropServices;
using Modular.Core.Interop;

namespace Modular.Core.Kvm;

/// <summary>MSR access (KVM_GET_MSRS / KVM_SET_MSRS), tolerant of MSRs this vCPU cannot take.</summary>
public sealed unsafe partial class KvmVcpu
{
    /// <summary>
    /// KVM_GET_MSRS for <paramref name="indices"/>. KVM stops at the first MSR it cannot read and
    /// returns how many it did; such an MSR is left out of the result and reading goes on after it.
    /// </summary>
    /// <remarks>
    /// Plain arrays and loops, no generic collection or span helper over <see cref="KvmMsrEntry"/>:
    /// this runs inside a migration's downtime, and generic code instantiated over Modular's own
    /// structs is not in the ReadyToRun image, so each such helper is compiled on first use
    /// (measured: 3.4 ms for the first call, 0.15 ms for the next).
    /// </remarks>
    public KvmMsrEntry[] GetMsrs(ReadOnlySpan<uint> indices)
    {
        var entries = new KvmMsrEntry[indices.Length];
        for (int i = 0; i < indices.Length; i++)
        {
            entries[i].Index = indices[i];
        }

        var read = new KvmMsrEntry[indices.Length];
        int count = 0;
        int start = 0;
        while (start < entries.Length)
        {
            int done = TransferMsrs(KvmIoctls.GetMsrs, entries, start, "KVM_GET_MSRS");
            for (int i = 0; i < done; i++)
            {
                read[count++] = entries[start + i];
            }

            start += done + 1; // skip the MSR KVM refused, if any
        }

        if (count == read.Length)
        {
            return read;
        }

        var result = new KvmMsrEntry[count];
        for (int i = 0; i < count; i++)
        {
            result[i] = read[i];
        }

        return result;
    }

    /// <summary>
    /// KVM_SET_MSRS. KVM stops at the first MSR it refuses (without an in-kernel LAPIC that is the
    /// async-PF interrupt MSR 0x4b564d06, see KVM-NOTES) and returns a partial count: that MSR is
    /// skipped and the rest are still set. Returns the indices that were skipped.
    /// </summary>
    public IReadOnlyList<uint> SetMsrs(ReadOnlySpan<KvmMsrEntry> entries)
    {
        var skipped = new List<uint>();
        var copy = new KvmMsrEntry[entries.Length];
        for (int i = 0; i < entries.Length; i++)
        {
            copy[i] = entries[i];
        }

        int start = 0;
        while (start < copy.Length)
        {
            int done = TransferMsrs(KvmIoctls.SetMsrs, copy, start, "KVM_SET_MSRS");
            if (start + done < copy.Length)
            {
                skipped.Add(copy[start + done].Index);
            }

            start += done + 1;
        }

        return skipped;
    }

    /// <summary>One KVM_GET_MSRS / KVM_SET_MSRS for <paramref name="entries"/> from <paramref name="start"/> on; returns how many KVM took.</summary>
    private int TransferMsrs(nuint request, KvmMsrEntry[] entries, int start, string name)
    {
        int length = entries.Length - start;
        byte[] buffer = new byte[sizeof(KvmMsrsHeader) + (length * sizeof(KvmMsrEntry))];
        fixed (byte* msrs = buffer)
        {
            ((KvmMsrsHeader*)msrs)->Nmsrs = (uint)length;
            var body = (KvmMsrEntry*)(msrs + sizeof(KvmMsrsHeader));
            for (int i = 0; i < length; i++)
            {
                body[i] = entries[start + i];
            }

            // SAFETY: msrs is a pinned kvm_msrs header followed by nmsrs entries.
            int done = Libc.Ioctl(_fd, request, msrs);
            if (done < 0)
            {
                throw new KvmIoctlException($"{name} on vCPU {Id} ({length} MSRs from 0x{entries[start].Index:x})", Marshal.GetLastPInvokeError());
            }

            for (int i = 0; i < length; i++)
            {
                entries[start + i] = body[i];
            }

            return done;
        }
    }
}
