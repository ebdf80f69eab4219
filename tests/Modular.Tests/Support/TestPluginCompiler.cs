using System.Reflection;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;

namespace Modular.Tests.Support;

/// <summary>
/// Compiles small plugins from C# source into real assemblies on disk, so the plugin host is tested
/// by loading real files from real folders.
/// </summary>
internal static class TestPluginCompiler
{
    private static readonly Lazy<List<MetadataReference>> FrameworkReferences = new(() =>
        ((string)AppContext.GetData("TRUSTED_PLATFORM_ASSEMBLIES")!)
            .Split(Path.PathSeparator)
            .Where(p => Path.GetFileName(p).StartsWith("System.", StringComparison.Ordinal) || Path.GetFileName(p) is "netstandard.dll" or "mscorlib.dll")
            .Select(p => (MetadataReference)MetadataReference.CreateFromFile(p))
            .ToList());

    /// <summary>The host's Modular.Abstractions.dll.</summary>
    internal static string ContractPath => typeof(Modular.Abstractions.Transports.IMigrationTransport).Assembly.Location;

    /// <summary>Compiles <paramref name="source"/> into <paramref name="directory"/>/<paramref name="assemblyName"/>.dll.</summary>
    /// <param name="directory">Output folder (created).</param>
    /// <param name="assemblyName">Assembly name.</param>
    /// <param name="source">C# source.</param>
    /// <param name="contractPath">The Modular.Abstractions to compile against (default: the host's).</param>
    internal static string Compile(string directory, string assemblyName, string source, string? contractPath = null)
    {
        Directory.CreateDirectory(directory);
        var references = new List<MetadataReference>(FrameworkReferences.Value)
        {
            MetadataReference.CreateFromFile(contractPath ?? ContractPath),
            MetadataReference.CreateFromFile(typeof(System.Composition.ExportAttribute).Assembly.Location),
        };
        CSharpCompilation compilation = CSharpCompilation.Create(
            assemblyName,
            [CSharpSyntaxTree.ParseText(source)],
            references,
            new CSharpCompilationOptions(OutputKind.DynamicallyLinkedLibrary, nullableContextOptions: NullableContextOptions.Enable));
        string path = Path.Combine(directory, assemblyName + ".dll");
        var result = compilation.Emit(path);
        if (!result.Success)
        {
            throw new InvalidOperationException("Test plugin did not compile: " + string.Join(Environment.NewLine, result.Diagnostics.Where(d => d.Severity == DiagnosticSeverity.Error)));
        }

        return path;
    }

    /// <summary>Source of a transport plugin for <paramref name="scheme"/>; its constructor throws when <paramref name="throwInConstructor"/>.</summary>
    internal static string TransportSource(string className, string scheme, bool throwInConstructor = false, string? notUsableReason = null) => $$"""
        using System.Threading;
        using System.Threading.Tasks;
        using Modular.Abstractions.Plugins;
        using Modular.Abstractions.Transports;
        [TransportMetadata("{{scheme}}")]
        public sealed class {{className}} : IMigrationTransport
        {
            public {{className}}() { {{(throwInConstructor ? "throw new System.InvalidOperationException(\"the frobnicator is missing\");" : "")}} }
            public PluginAvailability Probe() => {{(notUsableReason is null ? "PluginAvailability.Usable" : $"PluginAvailability.NotUsable(\"{notUsableReason}\")")}};
            public ValueTask<IMigrationConnection> ConnectAsync(TransportEndpoint endpoint, CancellationToken cancellationToken = default) => throw new TransportException("test transport cannot connect");
            public ValueTask<IMigrationListener> ListenAsync(TransportEndpoint endpoint, CancellationToken cancellationToken = default) => throw new TransportException("test transport cannot listen");
        }
        """;

    /// <summary>A fake contract assembly with another version, to build an incompatible plugin against.</summary>
    internal static string CompileFakeContract(string directory, string version) => Compile(
        directory,
        "Modular.Abstractions",
        $$"""
        [assembly: System.Reflection.AssemblyVersion("{{version}}")]
        namespace Modular.Abstractions.Plugins { public sealed class Marker { } }
        """,
        contractPath: typeof(object).Assembly.Location);

    /// <summary>A fresh empty temporary directory.</summary>
    internal static string TempDirectory(string name)
    {
        string path = Path.Combine(Path.GetTempPath(), "modular-tests", name + "-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(path);
        return path;
    }

    /// <summary>The repository root (the folder holding Modular.sln).</summary>
    internal static string RepoRoot
    {
        get
        {
            string? dir = AppContext.BaseDirectory;
            while (dir is not null && !File.Exists(Path.Combine(dir, "Modular.sln")))
            {
                dir = Path.GetDirectoryName(dir);
            }

            return dir ?? throw new InvalidOperationException("Modular.sln not found above " + AppContext.BaseDirectory);
        }
    }

    internal static Assembly ContractAssembly => typeof(Modular.Abstractions.Transports.IMigrationTransport).Assembly;
}
