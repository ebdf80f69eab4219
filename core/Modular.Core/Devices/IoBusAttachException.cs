namespace Modular.Core.Devices;

/// <summary>
/// A device could not be put on the <see cref="IoBus"/>: its ranges overlap another device's, are
/// empty or run off the end of the address space, or its id is taken. The message names both devices
/// and the ranges.
/// </summary>
public sealed class IoBusAttachException : Exception
{
    /// <summary>Creates the exception.</summary>
    public IoBusAttachException() { }

    /// <summary>Creates the exception with a message.</summary>
    /// <param name="message">Names the devices and ranges involved and what to change.</param>
    public IoBusAttachException(string message) : base(message) { }

    /// <summary>Creates the exception with a message and cause.</summary>
    /// <param name="message">Names the devices and ranges involved and what to change.</param>
    /// <param name="innerException">The cause.</param>
    public IoBusAttachException(string message, Exception innerException) : base(message, innerException) { }
}
