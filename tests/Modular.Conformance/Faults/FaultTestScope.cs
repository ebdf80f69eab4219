using Modular.Abstractions.Faults;

namespace Modular.Conformance.Faults;

/// <summary>
/// Owns one test's backend, mappings and touching threads, and takes them down in the only safe
/// order, also when an assertion failed halfway: dispose the backend first (which releases every
/// thread still waiting on a missing page), then wait for the threads, and only then unmap. Unmapping
/// while a thread still waits would make it fault again on freed memory when it wakes: SIGSEGV, and
/// the test host dies. A thread that a broken backend never releases keeps its mapping (leaked).
/// </summary>
public sealed class FaultTestScope(IFaultBackend backend) : IDisposable
{
    private readonly List<TestRamMapping> _mappings = new();
    private readonly List<NativeToucher> _touchers = new();

    /// <summary>The backend under test.</summary>
    public IFaultBackend Backend { get; } = backend;

    /// <summary>Maps <paramref name="pages"/> pages of test RAM, unmapped when the scope ends.</summary>
    /// <param name="pages">How many pages.</param>
    public TestRamMapping Map(int pages)
    {
        TestRamMapping mapping = TestRamMapping.Anonymous(pages);
        _mappings.Add(mapping);
        return mapping;
    }

    /// <summary>Maps <paramref name="pages"/> pages of test RAM and arms them on <see cref="Backend"/> (missing mode).</summary>
    /// <param name="pages">How many pages.</param>
    public TestRamMapping MapArmed(int pages)
    {
        TestRamMapping mapping = Map(pages);
        Backend.Arm(mapping.Range);
        return mapping;
    }

    /// <summary>Keeps <paramref name="toucher"/> to be joined before any memory is unmapped.</summary>
    /// <param name="toucher">A started toucher.</param>
    public NativeToucher Track(NativeToucher toucher)
    {
        _touchers.Add(toucher);
        return toucher;
    }

    /// <summary>Disposes the backend, joins the touchers, then unmaps (unless a toucher is still stuck).</summary>
    public void Dispose()
    {
        Backend.Shutdown();
        Backend.Dispose();
        bool allReleased = true;
        foreach (NativeToucher toucher in _touchers)
        {
            allReleased &= toucher.Finished(TimeSpan.FromSeconds(10));
            toucher.Dispose();
        }

        if (allReleased)
        {
            foreach (TestRamMapping mapping in _mappings)
            {
                mapping.Dispose();
            }
        }
    }
}
