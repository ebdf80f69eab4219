using System.Runtime.InteropServices;

namespace Modular.Core.Interop;

/// <summary>What kind of file system object a path names, as <c>statx(2)</c> reports it.</summary>
internal enum FileKind
{
    /// <summary>Nothing exists at the path.</summary>
    Missing = 0,

    /// <summary>A unix domain socket.</summary>
    Socket,

    /// <summary>Anything else: a regular file, directory, fifo, device or symbolic link.</summary>
    Other,
}

/// <summary>
/// <c>statx(2)</c> through glibc, used to tell a stale unix socket file from a regular file before
/// removing it. statx has one struct layout on every architecture, unlike <c>stat</c>.
/// </summary>
internal static partial class FileStatusInterop
{
    private const int AtFdCwd = -100;
    private const int AtSymlinkNoFollow = 0x100;
    private const uint StatxType = 0x1;
    private const uint StatxIno = 0x100;
    private const int StatxBufferSize = 256;     // sizeof(struct statx)
    private const int StatxModeOffset = 28;      // __u16 stx_mode
    private const int StatxInoOffset = 32;       // __u64 stx_ino
    private const ushort FileTypeMask = 0xF000;  // S_IFMT
    private const ushort SocketType = 0xC000;    // S_IFSOCK
    private const int Enoent = 2;
    private const int Enotdir = 20;

    /// <summary>The kind of object at <paramref name="path"/> (symbolic links are not followed) and its inode number.</summary>
    /// <param name="path">The path to inspect.</param>
    /// <param name="inode">The inode number, or 0 when nothing exists there.</param>
    /// <exception cref="IOException">statx failed for a reason other than the path not existing.</exception>
    internal static unsafe FileKind GetKind(string path, out ulong inode)
    {
        Span<byte> buffer = stackalloc byte[StatxBufferSize];
        int result;
        // SAFETY: buffer is a live stack allocation of sizeof(struct statx) bytes, pinned by fixed for
        // the duration of the call; the kernel writes at most that many bytes into it.
        fixed (byte* p = buffer)
        {
            result = Statx(AtFdCwd, path, AtSymlinkNoFollow, StatxType | StatxIno, p);
        }

        if (result != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            inode = 0;
            if (errno is Enoent or Enotdir)
            {
                return FileKind.Missing;
            }

            throw new IOException($"Cannot inspect '{path}': {Marshal.GetPInvokeErrorMessage(errno)}.", errno);
        }

        ushort mode = MemoryMarshal.Read<ushort>(buffer[StatxModeOffset..]);
        inode = MemoryMarshal.Read<ulong>(buffer[StatxInoOffset..]);
        return (mode & FileTypeMask) == SocketType ? FileKind.Socket : FileKind.Other;
    }

    [LibraryImport("libc.so.6", EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static unsafe partial int Statx(int dirFd, string path, int flags, uint mask, byte* buffer);
}
