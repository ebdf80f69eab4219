using System.Runtime.InteropServices;

namespace Modular.Conformance.Faults;

/// <summary>
/// A thread that reads or writes memory through native memcpy, the way a device model's copy or a
/// vCPU touches guest RAM: on a missing armed page it blocks in the kernel, in native code
/// (DESIGN.md §5). Managed code must never dereference armed memory itself.
/// </summary>
public sealed class NativeToucher : IDisposable
{
    private readonly Thread _thread;
    private readonly nint _buffer;
    private readonly int _length;
    private readonly ManualResetEventSlim _started = new();
    private volatile int _threadId;

    private NativeToucher(nint target, int length, bool write, byte fill)
    {
        _length = length;
        _buffer = Marshal.AllocHGlobal(length);
        Marshal.Copy(Enumerable.Repeat(fill, length).ToArray(), 0, _buffer, length);
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
        { IsBackground = true, Name = "conformance native toucher" };
        _thread.Start();
        _started.Wait();
    }

    /// <summary>The kernel thread id of the touching thread.</summary>
    public int ThreadId => _threadId;

    /// <summary>Starts a thread that copies <paramref name="length"/> bytes from <paramref name="source"/>.</summary>
    /// <param name="source">Where to read.</param>
    /// <param name="length">How many bytes.</param>
    public static NativeToucher Read(nint source, int length) => new(source, length, write: false, fill: 0xEE);

    /// <summary>Starts a thread that writes <paramref name="length"/> bytes of <paramref name="value"/> at <paramref name="target"/>.</summary>
    /// <param name="target">Where to write.</param>
    /// <param name="length">How many bytes.</param>
    /// <param name="value">The byte written.</param>
    public static NativeToucher Write(nint target, int length, byte value) => new(target, length, write: true, fill: value);

    /// <summary>True when the touch completed within <paramref name="timeout"/>.</summary>
    /// <param name="timeout">How long to wait.</param>
    public bool Finished(TimeSpan timeout) => _thread.Join(timeout);

    /// <summary>What a read touch copied (call after it finished).</summary>
    public byte[] Bytes()
    {
        byte[] copy = new byte[_length];
        Marshal.Copy(_buffer, copy, 0, _length);
        return copy;
    }

    /// <summary>Reads <paramref name="length"/> bytes at a present <paramref name="address"/> through native memcpy, on this thread.</summary>
    /// <param name="address">Where to read (the page must be present, or this thread blocks).</param>
    /// <param name="length">How many bytes.</param>
    public static byte[] ReadNow(nint address, int length)
    {
        nint buffer = Marshal.AllocHGlobal(length);
        try
        {
            Interop.Libc.Memcpy(buffer, address, (nuint)length);
            byte[] bytes = new byte[length];
            Marshal.Copy(buffer, bytes, 0, length);
            return bytes;
        }
        finally
        {
            Marshal.FreeHGlobal(buffer);
        }
    }

    /// <summary>Waits for the thread (it must have been released) and frees the buffer; leaks it if the thread is still blocked.</summary>
    public void Dispose()
    {
        if (_thread.Join(TimeSpan.FromSeconds(10)))
        {
            Marshal.FreeHGlobal(_buffer);
        }

        _started.Dispose();
    }
}
