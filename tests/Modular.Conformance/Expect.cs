using System.Diagnostics.CodeAnalysis;

namespace Modular.Conformance;

/// <summary>
/// Assertions whose failure message is exactly the kit's sentence for the plugin author, without
/// MSTest's "Assertion failed. Expected ..." framing around it.
/// </summary>
internal static class Expect
{
    /// <summary>Fails with <paramref name="message"/> unless <paramref name="condition"/> holds.</summary>
    public static void That([DoesNotReturnIf(false)] bool condition, string message)
    {
        if (!condition)
        {
            throw new AssertFailedException(message);
        }
    }

    /// <summary>Fails with <paramref name="message"/> and both values unless they are equal.</summary>
    public static void Equal<T>(T expected, T actual, string message)
    {
        if (!EqualityComparer<T>.Default.Equals(expected, actual))
        {
            throw new AssertFailedException($"{message} (expected {expected}, got {actual})");
        }
    }

    /// <summary>Fails with <paramref name="message"/> and the first differing byte unless the arrays are equal.</summary>
    public static void Bytes(byte[] expected, byte[] actual, string message)
    {
        int at = expected.AsSpan().CommonPrefixLength(actual);
        if (at != expected.Length || expected.Length != actual.Length)
        {
            throw new AssertFailedException(at < Math.Min(expected.Length, actual.Length)
                ? $"{message} (byte {at} is 0x{actual[at]:x2}, expected 0x{expected[at]:x2})"
                : $"{message} ({actual.Length} bytes, expected {expected.Length})");
        }
    }
}
