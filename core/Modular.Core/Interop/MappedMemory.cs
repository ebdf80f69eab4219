using System.Runtime.InteropServices;

namespace Modular.Core.Interop;

/// <summary>Owns one mmap'd range and unmaps it once.</summary>
public sealed class MappedMemory : SafeHandle
{
    /// <summary>Used by the interop marshaller; not for direct use.</summary>
    public MappedMemory()
        : base(Libc.MAP_FAILED, ownsHandle: true)
    {
    }

    internal MappedMemory(nint address, ulong length)
        : base(Libc.MAP_FAILED, ownsHandle: true)
    {
        SetHandle(address);
        Length = length;
    }

    /// <summary>The mapped length in bytes.</summary>
    public ulong Length { get; }

    /// <inheritdoc />
    public override bool IsInvalid => handle == Libc.MAP_FAILED || handle == 0;

    /// <inheritdoc />
    protected override bool ReleaseHandle() => Libc.Munmap(handle, (nuint)Length) == 0;
}
