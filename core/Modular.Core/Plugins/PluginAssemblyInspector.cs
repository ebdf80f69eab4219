using System.Reflection.Metadata;
using System.Reflection.PortableExecutable;

namespace Modular.Core.Plugins;

/// <summary>
/// Reads an assembly's references from its metadata without loading it, so a plugin built against
/// an incompatible contract is refused before any of its code runs.
/// </summary>
internal static class PluginAssemblyInspector
{
    internal const string ContractAssemblyName = "Modular.Abstractions";

    /// <summary>What the metadata of one file says.</summary>
    /// <param name="IsManagedAssembly">False for native libraries and unreadable files.</param>
    /// <param name="ContractVersion">The Modular.Abstractions version referenced, or null if none.</param>
    /// <param name="Version">The file's own assembly version.</param>
    /// <param name="Error">Why the file could not be read, if it could not.</param>
    internal sealed record Inspection(bool IsManagedAssembly, Version? ContractVersion, Version? Version, string? Error);

    internal static Inspection Inspect(string path)
    {
        try
        {
            using FileStream stream = File.OpenRead(path);
            using var pe = new PEReader(stream);
            if (!pe.HasMetadata)
            {
                return new Inspection(false, null, null, "not a .NET assembly");
            }

            MetadataReader md = pe.GetMetadataReader();
            if (!md.IsAssembly)
            {
                return new Inspection(false, null, null, "a .NET module without an assembly manifest");
            }

            Version own = md.GetAssemblyDefinition().Version;
            foreach (AssemblyReferenceHandle handle in md.AssemblyReferences)
            {
                AssemblyReference reference = md.GetAssemblyReference(handle);
                if (md.GetString(reference.Name) == ContractAssemblyName)
                {
                    return new Inspection(true, reference.Version, own, null);
                }
            }

            return new Inspection(true, null, own, null);
        }
        catch (BadImageFormatException ex)
        {
            return new Inspection(false, null, null, "not a valid assembly (" + ex.Message + ")");
        }
        catch (IOException ex)
        {
            return new Inspection(false, null, null, "cannot be read (" + ex.Message + ")");
        }
        catch (UnauthorizedAccessException ex)
        {
            return new Inspection(false, null, null, "cannot be read (" + ex.Message + ")");
        }
    }
}
