namespace Modular.Core.Migration.Stream;

/// <summary>
/// QEMU's XBZRLE page encoding (migration/xbzrle.c, docs/devel/migration/xbzrle.rst): a page that was
/// sent before is sent again as the difference to the copy sent then. The encoding alternates a
/// zero run (bytes equal to the old page) and a non-zero run (bytes that differ, followed by those
/// bytes themselves), each length a small ULEB128 (one or two bytes), and leaves out a trailing
/// zero run. An unchanged page encodes to nothing. On the wire a RAM record with
/// <see cref="RamRecordFlags.Xbzrle"/> carries the byte <see cref="EncodingFlag"/>, a be16 length
/// (at most one page) and the encoding.
/// </summary>
public static class Xbzrle
{
    /// <summary>QEMU's ENCODING_FLAG_XBZRLE, the byte after the record header.</summary>
    public const byte EncodingFlag = 0x01;

    /// <summary>
    /// Encodes <paramref name="current"/> against <paramref name="previous"/> into
    /// <paramref name="destination"/>. Returns the encoded length, 0 when the pages are equal, or -1
    /// when the encoding would not fit in <paramref name="destination"/> (send the page whole then).
    /// </summary>
    public static int Encode(ReadOnlySpan<byte> previous, ReadOnlySpan<byte> current, Span<byte> destination)
    {
        if (previous.Length != current.Length)
        {
            throw new ArgumentException("Both pages must have the same length.", nameof(current));
        }

        int length = current.Length;
        int i = 0, d = 0;
        while (i < length)
        {
            if (d + 2 > destination.Length)
            {
                return -1;
            }

            int zeroRun = previous[i..].CommonPrefixLength(current[i..]);
            if (zeroRun == length)
            {
                return 0;
            }

            i += zeroRun;
            if (i == length)
            {
                return d; // a trailing zero run is left out
            }

            d += EncodeLength(zeroRun, destination[d..]);
            if (d + 2 > destination.Length)
            {
                return -1;
            }

            int start = i;
            while (i < length && previous[i] != current[i])
            {
                i++;
            }

            int changed = i - start;
            d += EncodeLength(changed, destination[d..]);
            if (d + changed > destination.Length)
            {
                return -1;
            }

            current.Slice(start, changed).CopyTo(destination[d..]);
            d += changed;
        }

        return d;
    }

    /// <summary>
    /// Applies <paramref name="encoded"/> to <paramref name="page"/> (the previous copy, changed in
    /// place). Returns the end of the last change, or -1 when the encoding is malformed (a run past
    /// the page or past the encoding, an empty run where QEMU refuses one, a length over two bytes).
    /// </summary>
    public static int Decode(ReadOnlySpan<byte> encoded, Span<byte> page)
    {
        int i = 0, d = 0;
        while (i < encoded.Length)
        {
            if (encoded.Length - i < 2)
            {
                return -1;
            }

            int used = DecodeLength(encoded[i..], out int zeroRun);
            if (used < 0 || (i != 0 && zeroRun == 0))
            {
                return -1;
            }

            i += used;
            d += zeroRun;
            if (d > page.Length || encoded.Length - i < 2)
            {
                return -1;
            }

            used = DecodeLength(encoded[i..], out int changed);
            if (used < 0 || changed == 0)
            {
                return -1;
            }

            i += used;
            if (d + changed > page.Length || i + changed > encoded.Length)
            {
                return -1;
            }

            encoded.Slice(i, changed).CopyTo(page[d..]);
            d += changed;
            i += changed;
        }

        return d;
    }

    // QEMU's uleb128_encode_small: values under 2^14 in one or two bytes.
    private static int EncodeLength(int value, Span<byte> destination)
    {
        if (value < 0x80)
        {
            destination[0] = (byte)value;
            return 1;
        }

        destination[0] = (byte)((value & 0x7f) | 0x80);
        destination[1] = (byte)(value >> 7);
        return 2;
    }

    // QEMU's uleb128_decode_small: -1 for a value longer than two bytes.
    private static int DecodeLength(ReadOnlySpan<byte> source, out int value)
    {
        if ((source[0] & 0x80) == 0)
        {
            value = source[0];
            return 1;
        }

        if ((source[1] & 0x80) != 0)
        {
            value = 0;
            return -1;
        }

        value = (source[0] & 0x7f) | (source[1] << 7);
        return 2;
    }
}
