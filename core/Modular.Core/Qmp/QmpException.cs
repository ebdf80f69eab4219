namespace Modular.Core.Qmp;

/// <summary>The error classes QEMU puts in <c>{"error": {"class": ...}}</c> (qapi/error.json).</summary>
public static class QmpErrorClass
{
    /// <summary>Any error without a more specific class; almost every QEMU error is one.</summary>
    public const string GenericError = "GenericError";

    /// <summary>The command does not exist, or may not run now (before negotiation).</summary>
    public const string CommandNotFound = "CommandNotFound";

    /// <summary>A device named in the arguments does not exist.</summary>
    public const string DeviceNotFound = "DeviceNotFound";

    /// <summary>The device exists but is not active.</summary>
    public const string DeviceNotActive = "DeviceNotActive";

    /// <summary>KVM lacks a capability the command needs.</summary>
    public const string KvmMissingCap = "KVMMissingCap";
}

/// <summary>
/// Thrown by a QMP command handler (or by <see cref="QmpArguments"/>) to answer the client with
/// <c>{"error": {"class": ErrorClass, "desc": Description}}</c>. Any other exception from a handler
/// is answered as a <c>GenericError</c> carrying its message.
/// </summary>
public sealed class QmpException : Exception
{
    /// <summary>Creates the error reply for a failed command.</summary>
    /// <param name="errorClass">One of <see cref="QmpErrorClass"/>, as QEMU would use for the same failure.</param>
    /// <param name="description">The human-readable <c>desc</c>, worded as QEMU words it where QEMU has the same error.</param>
    public QmpException(string errorClass, string description)
        : base(description)
    {
        ErrorClass = errorClass;
    }

    /// <summary>Creates the error reply for a failed command, keeping the cause for logs.</summary>
    /// <param name="errorClass">One of <see cref="QmpErrorClass"/>.</param>
    /// <param name="description">The human-readable <c>desc</c>.</param>
    /// <param name="innerException">What went wrong underneath.</param>
    public QmpException(string errorClass, string description, Exception innerException)
        : base(description, innerException)
    {
        ErrorClass = errorClass;
    }

    /// <summary>The QMP error class (<c>GenericError</c>, <c>CommandNotFound</c>, ...).</summary>
    public string ErrorClass { get; }

    /// <summary>The human-readable <c>desc</c> member of the reply.</summary>
    public string Description => Message;

    /// <summary>A <c>GenericError</c> with <paramref name="description"/>.</summary>
    /// <param name="description">The <c>desc</c> member.</param>
    public static QmpException Generic(string description) => new(QmpErrorClass.GenericError, description);
}
