using System.Runtime.InteropServices;
using Modular.Core.Interop;

namespace Modular.Core.Kvm;

/// <summary>Marshals struct kvm_cpuid2 (a header followed by entries) for the CPUID ioctls.</summary>
internal static unsafe class KvmCpuidTable
{
    private const int InitialEntries = 80;
    private const int MaxEntries = 4096;

    /// <summary>Reads a CPUID table with a GET ioctl, doubling the buffer while the kernel answers E2BIG.</summary>
    internal static KvmCpuidEntry2[] Fetch(SafeFileDescriptor fd, nuint request, string operation)
    {
        for (int capacity = InitialEntries; capacity <= MaxEntries; capacity *= 2)
        {
            int bytes = sizeof(KvmCpuid2Header) + (capacity * sizeof(KvmCpuidEntry2));
            byte[] buffer = new byte[bytes];
            fixed (byte* table = buffer)
            {
                ((KvmCpuid2Header*)table)->Nent = (uint)capacity;
                // SAFETY: table holds a kvm_cpuid2 header and `capacity` entries, as nent tells the kernel.
                int result = Libc.Ioctl(fd, request, table);
                if (result >= 0)
                {
                    int count = (int)((KvmCpuid2Header*)table)->Nent;
                    return new ReadOnlySpan<KvmCpuidEntry2>(table + sizeof(KvmCpuid2Header), count).ToArray();
                }

                int errno = Marshal.GetLastPInvokeError();
                if (errno != Libc.E2BIG)
                {
                    throw new KvmIoctlException(operation, errno);
                }
            }
        }

        throw new KvmIoctlException(operation, $"the kernel wants more than {MaxEntries} CPUID entries.");
    }

    /// <summary>Writes a CPUID table with KVM_SET_CPUID2.</summary>
    internal static void Store(SafeFileDescriptor fd, ReadOnlySpan<KvmCpuidEntry2> entries, string operation)
    {
        int bytes = sizeof(KvmCpuid2Header) + (entries.Length * sizeof(KvmCpuidEntry2));
        byte[] buffer = new byte[bytes];
        fixed (byte* table = buffer)
        {
            ((KvmCpuid2Header*)table)->Nent = (uint)entries.Length;
            entries.CopyTo(new Span<KvmCpuidEntry2>(table + sizeof(KvmCpuid2Header), entries.Length));
            // SAFETY: table is a complete kvm_cpuid2 with nent entries, read by the kernel during the call.
            KvmCall.Checked(fd, KvmIoctls.SetCpuid2, table, operation);
        }
    }
}
