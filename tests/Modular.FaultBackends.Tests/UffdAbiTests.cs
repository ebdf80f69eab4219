using System.Diagnostics;
using System.Globalization;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Modular.FaultBackends.Userfaultfd;
using static Modular.FaultBackends.Userfaultfd.Interop.Libc;

namespace Modular.FaultBackends.Tests;

/// <summary>
/// Compiles a C program against the installed kernel headers and compares every constant, struct
/// size and field offset the userfaultfd interop uses with the C# declarations.
/// </summary>
[TestClass]
public sealed class UffdAbiTests
{
    private static readonly (string Name, string CExpression, ulong Ours)[] Values =
    [
        ("UFFD_API", "UFFD_API", UffdAbi.Api),
        ("UFFDIO_API", "UFFDIO_API", UffdAbi.IoctlApi),
        ("UFFDIO_REGISTER", "UFFDIO_REGISTER", UffdAbi.IoctlRegister),
        ("UFFDIO_UNREGISTER", "UFFDIO_UNREGISTER", UffdAbi.IoctlUnregister),
        ("UFFDIO_WAKE", "UFFDIO_WAKE", UffdAbi.IoctlWake),
        ("UFFDIO_COPY", "UFFDIO_COPY", UffdAbi.IoctlCopy),
        ("UFFDIO_ZEROPAGE", "UFFDIO_ZEROPAGE", UffdAbi.IoctlZeropage),
        ("USERFAULTFD_IOC_NEW", "USERFAULTFD_IOC_NEW", UffdAbi.IoctlDeviceNew),
        ("_UFFDIO_REGISTER", "_UFFDIO_REGISTER", UffdAbi.IoctlBitRegister),
        ("_UFFDIO_UNREGISTER", "_UFFDIO_UNREGISTER", UffdAbi.IoctlBitUnregister),
        ("_UFFDIO_WAKE", "_UFFDIO_WAKE", UffdAbi.IoctlBitWake),
        ("_UFFDIO_COPY", "_UFFDIO_COPY", UffdAbi.IoctlBitCopy),
        ("_UFFDIO_ZEROPAGE", "_UFFDIO_ZEROPAGE", UffdAbi.IoctlBitZeropage),
        ("_UFFDIO_API", "_UFFDIO_API", UffdAbi.IoctlBitApi),
        ("UFFD_FEATURE_MISSING_HUGETLBFS", "UFFD_FEATURE_MISSING_HUGETLBFS", UffdAbi.FeatureMissingHugetlbfs),
        ("UFFD_FEATURE_MISSING_SHMEM", "UFFD_FEATURE_MISSING_SHMEM", UffdAbi.FeatureMissingShmem),
        ("UFFD_FEATURE_THREAD_ID", "UFFD_FEATURE_THREAD_ID", UffdAbi.FeatureThreadId),
        ("UFFD_FEATURE_EXACT_ADDRESS", "UFFD_FEATURE_EXACT_ADDRESS", UffdAbi.FeatureExactAddress),
        ("UFFDIO_REGISTER_MODE_MISSING", "UFFDIO_REGISTER_MODE_MISSING", UffdAbi.RegisterModeMissing),
        ("UFFD_EVENT_PAGEFAULT", "UFFD_EVENT_PAGEFAULT", UffdAbi.EventPagefault),
        ("UFFD_PAGEFAULT_FLAG_WRITE", "UFFD_PAGEFAULT_FLAG_WRITE", UffdAbi.PagefaultFlagWrite),
        ("UFFD_USER_MODE_ONLY", "UFFD_USER_MODE_ONLY", UffdAbi.UserModeOnly),
        ("SYS_userfaultfd", "SYS_userfaultfd",
            (ulong)(RuntimeInformation.ProcessArchitecture == Architecture.Arm64 ? UffdAbi.SysUserfaultfdArm64 : UffdAbi.SysUserfaultfdX64)),
        ("sizeof(uffdio_api)", "sizeof(struct uffdio_api)", Size<UffdAbi.UffdioApi>()),
        ("offsetof(uffdio_api.api)", "offsetof(struct uffdio_api, api)", Offset<UffdAbi.UffdioApi>("Api")),
        ("offsetof(uffdio_api.features)", "offsetof(struct uffdio_api, features)", Offset<UffdAbi.UffdioApi>("Features")),
        ("offsetof(uffdio_api.ioctls)", "offsetof(struct uffdio_api, ioctls)", Offset<UffdAbi.UffdioApi>("Ioctls")),
        ("sizeof(uffdio_range)", "sizeof(struct uffdio_range)", Size<UffdAbi.UffdioRange>()),
        ("offsetof(uffdio_range.start)", "offsetof(struct uffdio_range, start)", Offset<UffdAbi.UffdioRange>("Start")),
        ("offsetof(uffdio_range.len)", "offsetof(struct uffdio_range, len)", Offset<UffdAbi.UffdioRange>("Len")),
        ("sizeof(uffdio_register)", "sizeof(struct uffdio_register)", Size<UffdAbi.UffdioRegister>()),
        ("offsetof(uffdio_register.range)", "offsetof(struct uffdio_register, range)", Offset<UffdAbi.UffdioRegister>("Range")),
        ("offsetof(uffdio_register.mode)", "offsetof(struct uffdio_register, mode)", Offset<UffdAbi.UffdioRegister>("Mode")),
        ("offsetof(uffdio_register.ioctls)", "offsetof(struct uffdio_register, ioctls)", Offset<UffdAbi.UffdioRegister>("Ioctls")),
        ("sizeof(uffdio_copy)", "sizeof(struct uffdio_copy)", Size<UffdAbi.UffdioCopy>()),
        ("offsetof(uffdio_copy.dst)", "offsetof(struct uffdio_copy, dst)", Offset<UffdAbi.UffdioCopy>("Dst")),
        ("offsetof(uffdio_copy.src)", "offsetof(struct uffdio_copy, src)", Offset<UffdAbi.UffdioCopy>("Src")),
        ("offsetof(uffdio_copy.len)", "offsetof(struct uffdio_copy, len)", Offset<UffdAbi.UffdioCopy>("Len")),
        ("offsetof(uffdio_copy.mode)", "offsetof(struct uffdio_copy, mode)", Offset<UffdAbi.UffdioCopy>("Mode")),
        ("offsetof(uffdio_copy.copy)", "offsetof(struct uffdio_copy, copy)", Offset<UffdAbi.UffdioCopy>("Copy")),
        ("sizeof(uffdio_zeropage)", "sizeof(struct uffdio_zeropage)", Size<UffdAbi.UffdioZeropage>()),
        ("offsetof(uffdio_zeropage.range)", "offsetof(struct uffdio_zeropage, range)", Offset<UffdAbi.UffdioZeropage>("Range")),
        ("offsetof(uffdio_zeropage.mode)", "offsetof(struct uffdio_zeropage, mode)", Offset<UffdAbi.UffdioZeropage>("Mode")),
        ("offsetof(uffdio_zeropage.zeropage)", "offsetof(struct uffdio_zeropage, zeropage)", Offset<UffdAbi.UffdioZeropage>("Zeropage")),
        ("sizeof(uffd_msg)", "sizeof(struct uffd_msg)", Size<UffdAbi.UffdMsg>()),
        ("offsetof(uffd_msg.event)", "offsetof(struct uffd_msg, event)", Offset<UffdAbi.UffdMsg>("Event")),
        ("offsetof(uffd_msg.pagefault.flags)", "offsetof(struct uffd_msg, arg.pagefault.flags)", Offset<UffdAbi.UffdMsg>("PagefaultFlags")),
        ("offsetof(uffd_msg.pagefault.address)", "offsetof(struct uffd_msg, arg.pagefault.address)", Offset<UffdAbi.UffdMsg>("PagefaultAddress")),
        ("offsetof(uffd_msg.pagefault.feat.ptid)", "offsetof(struct uffd_msg, arg.pagefault.feat.ptid)", Offset<UffdAbi.UffdMsg>("PagefaultPtid")),
        ("sizeof(uffd_msg.pagefault.feat.ptid)", "sizeof(((struct uffd_msg *)0)->arg.pagefault.feat.ptid)", sizeof(uint)),
        ("sizeof(pollfd)", "sizeof(struct pollfd)", Size<PollFd>()),
        ("offsetof(pollfd.events)", "offsetof(struct pollfd, events)", Offset<PollFd>("Events")),
        ("offsetof(pollfd.revents)", "offsetof(struct pollfd, revents)", Offset<PollFd>("Revents")),
        ("O_RDWR", "O_RDWR", O_RDWR),
        ("O_NONBLOCK", "O_NONBLOCK", O_NONBLOCK),
        ("O_CLOEXEC", "O_CLOEXEC", O_CLOEXEC),
        ("EFD_NONBLOCK", "EFD_NONBLOCK", EFD_NONBLOCK),
        ("EFD_CLOEXEC", "EFD_CLOEXEC", EFD_CLOEXEC),
        ("POLLIN", "POLLIN", (ulong)POLLIN),
        ("POLLERR", "POLLERR", (ulong)POLLERR),
        ("POLLNVAL", "POLLNVAL", (ulong)POLLNVAL),
        ("PROT_READ", "PROT_READ", PROT_READ),
        ("PROT_WRITE", "PROT_WRITE", PROT_WRITE),
        ("MAP_PRIVATE", "MAP_PRIVATE", MAP_PRIVATE),
        ("MAP_ANONYMOUS", "MAP_ANONYMOUS", MAP_ANONYMOUS),
        ("MAP_HUGETLB", "MAP_HUGETLB", MAP_HUGETLB),
        ("EPERM", "EPERM", EPERM),
        ("ENOENT", "ENOENT", ENOENT),
        ("EINTR", "EINTR", EINTR),
        ("EBADF", "EBADF", EBADF),
        ("EAGAIN", "EAGAIN", EAGAIN),
        ("ENOMEM", "ENOMEM", ENOMEM),
        ("EACCES", "EACCES", EACCES),
        ("EBUSY", "EBUSY", EBUSY),
        ("EEXIST", "EEXIST", EEXIST),
        ("EINVAL", "EINVAL", EINVAL),
        ("ENOTTY", "ENOTTY", ENOTTY),
        ("ENOSYS", "ENOSYS", ENOSYS),
    ];

    [TestMethod]
    public void EveryConstantSizeAndOffsetMatchesTheKernelHeaders()
    {
        Dictionary<string, ulong> fromC = CompileAndRun();
        List<string> mismatches = new();
        foreach ((string name, _, ulong ours) in Values)
        {
            if (!fromC.TryGetValue(name, out ulong theirs))
            {
                mismatches.Add($"{name}: not printed by the C program");
            }
            else if (theirs != ours)
            {
                mismatches.Add($"{name}: C 0x{theirs:x}, C# 0x{ours:x}");
            }
        }
        Assert.IsEmpty(mismatches, string.Join("\n", mismatches));
        Assert.HasCount(Values.Length, fromC);
    }

    [TestMethod]
    public void RequiredRangeIoctlsOmitZeropageForHugePages()
    {
        Assert.AreEqual(0b11100UL, UffdAbi.RequiredRangeIoctls(4096));
        Assert.AreEqual(0b01100UL, UffdAbi.RequiredRangeIoctls(2 * 1024 * 1024));
    }

    private static Dictionary<string, ulong> CompileAndRun()
    {
        string directory = Directory.CreateTempSubdirectory("modular-uffd-abi-").FullName;
        try
        {
            string source = Path.Combine(directory, "abi.c");
            string program = Path.Combine(directory, "abi");
            File.WriteAllText(source, CSource());
            (int compileExit, string compileOutput) = Run("gcc", $"-std=gnu11 -Wall -Werror -o \"{program}\" \"{source}\"");
            if (compileExit == -1)
            {
                Assert.Inconclusive("gcc is not installed; the userfaultfd ABI cannot be checked against the kernel headers.");
            }
            Assert.AreEqual(0, compileExit, $"the ABI program did not compile:\n{compileOutput}");
            (int runExit, string output) = Run(program, "");
            Assert.AreEqual(0, runExit, output);
            Dictionary<string, ulong> values = new();
            foreach (string line in output.Split('\n', StringSplitOptions.RemoveEmptyEntries))
            {
                int space = line.LastIndexOf(' ');
                values[line[..space]] = ulong.Parse(line[(space + 1)..], CultureInfo.InvariantCulture);
            }
            return values;
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    private static string CSource()
    {
        System.Text.StringBuilder text = new();
        text.AppendLine("""
            #define _GNU_SOURCE
            #include <errno.h>
            #include <fcntl.h>
            #include <poll.h>
            #include <stddef.h>
            #include <stdio.h>
            #include <sys/eventfd.h>
            #include <sys/ioctl.h>
            #include <sys/mman.h>
            #include <sys/syscall.h>
            #include <linux/userfaultfd.h>
            int main(void)
            {
            """);
        foreach ((string name, string expression, _) in Values)
        {
            text.AppendLine(CultureInfo.InvariantCulture, $"    printf(\"%s %llu\\n\", \"{name}\", (unsigned long long)({expression}));");
        }
        text.AppendLine("    return 0;\n}");
        return text.ToString();
    }

    private static (int ExitCode, string Output) Run(string file, string arguments)
    {
        ProcessStartInfo start = new(file, arguments) { RedirectStandardOutput = true, RedirectStandardError = true };
        Process process;
        try
        {
            process = Process.Start(start)!;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return (-1, "");
        }
        using (process)
        {
            Task<string> error = process.StandardError.ReadToEndAsync();
            string output = process.StandardOutput.ReadToEnd();
            process.WaitForExit();
            return (process.ExitCode, output + error.Result);
        }
    }

    private static ulong Size<T>() where T : unmanaged => (ulong)Unsafe.SizeOf<T>();

    private static ulong Offset<T>(string field) where T : unmanaged => (ulong)Marshal.OffsetOf<T>(field);
}
