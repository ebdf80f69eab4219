using Modular.Abstractions.Faults;
using Modular.Conformance.Faults;
using Modular.FaultBackends.Userfaultfd;

namespace Modular.FaultBackends.Tests;

/// <summary>The conformance kit against the userfaultfd fault backend, on the real kernel.</summary>
[TestClass]
public sealed class UserfaultfdConformanceTests : FaultBackendConformanceTests
{
    protected override IFaultBackendFactory Factory { get; } = new UserfaultfdBackendFactory();
}
