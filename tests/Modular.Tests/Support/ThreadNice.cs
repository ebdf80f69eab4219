using System.Runtime.InteropServices;

namespace Modular.Tests.Support;

/// <summary>Reads a thread's nice value (getpriority(2) on its thread id).</summary>
internal static partial class ThreadNice
{
    /// <summary>The calling thread's id as the kernel knows it.</summary>
    public static int CurrentThreadId => Interop.Gettid();

    /// <summary>The nice value of the calling thread.</summary>
    public static int OfCurrentThread() => Of(Interop.Gettid());

    /// <summary>The nice value of thread <paramref name="threadId"/> of this process.</summary>
    public static int Of(int threadId) => Interop.Getpriority(0, (uint)threadId);

    private static partial class Interop
    {
        [LibraryImport("libc", EntryPoint = "getpriority")]
        internal static partial int Getpriority(int which, uint who);

        [LibraryImport("libc", EntryPoint = "gettid")]
        internal static partial int Gettid();
    }
}
