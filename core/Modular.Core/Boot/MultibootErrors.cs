namespace Modular.Core.Boot;

/// <summary>
/// A file is not a Multiboot v1 kernel Modular can load: no header, a bad header, or an image whose
/// layout does not add up. The message names the file and says what to change.
/// </summary>
public sealed class MultibootImageException : Exception
{
    /// <summary>Creates the exception for <paramref name="fileName"/>.</summary>
    /// <param name="fileName">The kernel file, as the user named it.</param>
    /// <param name="message">The whole sentence the user reads, naming the file.</param>
    public MultibootImageException(string fileName, string message)
        : base(message)
    {
        FileName = fileName;
    }

    /// <summary>The kernel file the error is about.</summary>
    public string FileName { get; }
}

/// <summary>
/// A parsed Multiboot kernel does not fit the guest it is loaded into: a segment outside RAM, or a
/// segment over the Multiboot info block. The message names the file and the addresses.
/// </summary>
public sealed class MultibootLoadException : Exception
{
    /// <summary>Creates the exception for <paramref name="fileName"/>.</summary>
    /// <param name="fileName">The kernel file, as the user named it.</param>
    /// <param name="message">The whole sentence the user reads, naming the file.</param>
    public MultibootLoadException(string fileName, string message)
        : base(message)
    {
        FileName = fileName;
    }

    /// <summary>The kernel file the error is about.</summary>
    public string FileName { get; }
}
