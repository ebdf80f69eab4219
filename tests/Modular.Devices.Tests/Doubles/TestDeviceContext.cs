using Modular.Abstractions.Devices;
using Modular.Abstractions.Memory;

namespace Modular.Devices.Tests.Doubles;

/// <summary>A machine as a device sees it: in-memory RAM, and exit requests recorded instead of performed.</summary>
public sealed class TestDeviceContext(InMemoryGuestMemory memory) : IDeviceContext
{
    public TestDeviceContext() : this(new InMemoryGuestMemory(1024 * 1024)) { }

    public InMemoryGuestMemory Ram { get; } = memory;

    public IGuestMemory Memory => Ram;

    public List<int> ExitRequests { get; } = new();

    public void RequestExit(int exitCode) { lock (ExitRequests) { ExitRequests.Add(exitCode); } }
}
