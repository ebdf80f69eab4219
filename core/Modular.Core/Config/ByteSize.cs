using System.Globalization;

namespace Modular.Core.Config;

/// <summary>Parses and formats sizes the way QEMU's <c>-m</c> takes them: <c>256M</c>, <c>1G</c>, <c>4096</c>.</summary>
public static class ByteSize
{
    /// <summary>Parses a size: a whole number of bytes, optionally with K, M, G or T (binary units; KiB etc. also accepted).</summary>
    /// <param name="text">The text.</param>
    /// <param name="bytes">The size in bytes.</param>
    /// <returns>False when the text is not a size or overflows.</returns>
    public static bool TryParse(string? text, out ulong bytes)
    {
        bytes = 0;
        if (string.IsNullOrWhiteSpace(text))
        {
            return false;
        }

        string t = text.Trim();
        int end = 0;
        while (end < t.Length && char.IsAsciiDigit(t[end]))
        {
            end++;
        }

        if (end == 0 || !ulong.TryParse(t.AsSpan(0, end), NumberStyles.None, CultureInfo.InvariantCulture, out ulong number))
        {
            return false;
        }

        int shift = t[end..].ToUpperInvariant() switch
        {
            "" or "B" => 0,
            "K" or "KB" or "KIB" => 10,
            "M" or "MB" or "MIB" => 20,
            "G" or "GB" or "GIB" => 30,
            "T" or "TB" or "TIB" => 40,
            _ => -1,
        };
        if (shift < 0 || (shift > 0 && number > (ulong.MaxValue >> shift)))
        {
            return false;
        }

        bytes = number << shift;
        return true;
    }

    /// <summary>Formats bytes with the largest binary unit that divides them (<c>256M</c>).</summary>
    /// <param name="bytes">The size.</param>
    public static string Format(ulong bytes)
    {
        string[] units = ["", "K", "M", "G", "T"];
        int unit = 0;
        while (unit < units.Length - 1 && bytes != 0 && bytes % 1024 == 0)
        {
            bytes /= 1024;
            unit++;
        }

        return bytes.ToString(CultureInfo.InvariantCulture) + units[unit];
    }
}
