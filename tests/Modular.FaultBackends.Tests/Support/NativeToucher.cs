using System.Runtime.InteropServices;

namespace Modular.FaultBackends.Tests.Support;

/// <summary>
/// A thread that touches (reads or writes) memory through native memcpy, as a device model or a
/// vCPU would: when the page is missing it blocks in the kernel, in native code.
/// </summary>
internal sealed class NativeToucher : IDisposable
{
    private readonly Thread _thread;
    private readonly nint _buffer;
    private readonly int _length;
    private readonly ManualResetEventSlim _started = new();
    private volatile int _threadId;

    private NativeToucher(nint target, int length, bool write, byte fill)
    {
        _length = length;
        unsafe
        {
            // SAFETY: a private native buffer owned by this object, freed in Dispose after the thread ended.
            _buffer = (nint)NativeMemory.Alloc((nuint)length);
            new Span<byte>((void*)_buffer, length).Fill(fill);
        }
        _thread = new Thread(() =>
        {
            _threadId = Interop.Libc.Gettid();
            _started.Set();
            if (write)
            {
                Interop.Libc.Memcpy(target, _buffer, (nuint)length);
            }
            else
            {
                Interop.Libc.Memcpy(_buffer, target, (nuint)length);
            }
        })
        { IsBackground = true, Name = "native toucher" };
        _thread.Start();
        _started.Wait();
    }

    /// <summary>The kernel thread id of the touching thread.</summary>
    public int ThreadId => _threadId;

    /// <summary>Starts a thread that copies <paramref name="length"/> bytes from <paramref name="source"/>.</summary>
    public static NativeToucher Read(nint source, int length) => new(source, length, write: false, fill: 0xEE);

    /// <summary>Starts a thread that writes <paramref name="length"/> bytes of <paramref name="value"/> at <paramref name="target"/>.</summary>
    public static NativeToucher Write(nint target, int length, byte value) => new(target, length, write: true, fill: value);

    /// <summary>True when the touch completed within <paramref name="timeout"/>.</summary>
    public bool Finished(TimeSpan timeout) => _thread.Join(timeout);

    /// <summary>What a read touch copied (call after it finished).</summary>
    public byte[] Bytes()
    {
        byte[] copy = new byte[_length];
        Marshal.Copy(_buffer, copy, 0, _length);
        return copy;
    }

    /// <summary>Waits for the thread (it must have been released) and frees the buffer.</summary>
    public void Dispose()
    {
        if (_thread.Join(TimeSpan.FromSeconds(10)))
        {
            unsafe
            {
                // SAFETY: the thread that used the buffer has ended.
                NativeMemory.Free((void*)_buffer);
            }
        }
        _started.Dispose();
    }

    /// <summary>Reads <paramref name="length"/> bytes at <paramref name="address"/> through native memcpy (on this thread).</summary>
    public static byte[] ReadNow(nint address, int length)
    {
        byte[] bytes = new byte[length];
        unsafe
        {
            fixed (byte* destination = bytes)
            {
                // SAFETY: destination is pinned and has room for length bytes; the source page is present.
                Interop.Libc.Memcpy((nint)destination, address, (nuint)length);
            }
        }
        return bytes;
    }
}
