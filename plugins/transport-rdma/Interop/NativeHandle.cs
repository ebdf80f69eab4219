using System.Runtime.InteropServices;
using Modular.Abstractions.Transports;

namespace Modular.Transports.Rdma.Interop;

/// <summary>
/// Base of every owned rdma-core object. A handle may name parents (a memory region's protection
/// domain, a queue pair's completion queue): it holds a reference on each, so a parent is never
/// destroyed before its children, whatever order the finalizer or Dispose calls come in.
/// </summary>
internal abstract class NativeHandle : SafeHandle
{
    private SafeHandle[] _parents = [];

    protected NativeHandle() : base(0, ownsHandle: true) { }

    public override bool IsInvalid => handle == 0;

    /// <summary>The raw pointer, for calls inside the Interop layer while the caller keeps this handle alive.</summary>
    internal nint Pointer => handle;

    /// <summary>Takes ownership of <paramref name="pointer"/> and references <paramref name="parents"/> until release.</summary>
    protected void Adopt(nint pointer, params SafeHandle[] parents)
    {
        foreach (SafeHandle parent in parents)
        {
            bool added = false;
            parent.DangerousAddRef(ref added);
        }

        _parents = parents;
        SetHandle(pointer);
    }

    /// <summary>Swaps one parent for another (rdma_migrate_id moves an id to another event channel).</summary>
    protected void ReplaceParent(SafeHandle oldParent, SafeHandle newParent)
    {
        int index = Array.IndexOf(_parents, oldParent);
        bool added = false;
        newParent.DangerousAddRef(ref added);
        if (index >= 0)
        {
            _parents[index] = newParent;
            oldParent.DangerousRelease();
        }
        else
        {
            _parents = [.. _parents, newParent];
        }
    }

    protected sealed override bool ReleaseHandle()
    {
        bool freed = Free(handle);
        for (int i = _parents.Length - 1; i >= 0; i--)
        {
            _parents[i].DangerousRelease();
        }

        return freed;
    }

    /// <summary>Destroys the native object.</summary>
    protected abstract bool Free(nint pointer);

    /// <summary>The error for a failed rdma-core call, naming the call and errno.</summary>
    internal static TransportException Failure(string call, int errno) =>
        new($"{call} failed: errno {errno} ({Marshal.GetPInvokeErrorMessage(errno)})");

    /// <summary>The error for a failed rdma-core call that set errno.</summary>
    internal static TransportException LastFailure(string call) => Failure(call, Marshal.GetLastPInvokeError());
}

/// <summary>Page-aligned native memory for registered buffers (freed with NativeMemory.AlignedFree).</summary>
internal sealed class NativeBufferHandle : NativeHandle
{
    private NativeBufferHandle() { }

    /// <summary>The size in bytes.</summary>
    internal nuint Length { get; private set; }

    internal static unsafe NativeBufferHandle Allocate(nuint length)
    {
        var buffer = new NativeBufferHandle();
        // SAFETY: AlignedAlloc returns fresh memory (or throws); the handle owns it from here and
        // zeroes it so nothing stale is ever sent.
        void* memory = NativeMemory.AlignedAlloc(length, 4096);
        NativeMemory.Clear(memory, length);
        buffer.Length = length;
        buffer.Adopt((nint)memory);
        return buffer;
    }

    protected override unsafe bool Free(nint pointer)
    {
        // SAFETY: pointer came from AlignedAlloc and is released exactly once (SafeHandle guarantees it).
        NativeMemory.AlignedFree((void*)pointer);
        return true;
    }
}
