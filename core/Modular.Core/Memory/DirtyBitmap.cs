using System.Numerics;

namespace Modular.Core.Memory;

/// <summary>
/// One bit per target page, in 64-bit words laid out like KVM's dirty log (bit n of word w is page
/// 64w+n). Set, test-and-clear and word merges are atomic, so a device thread can mark pages while
/// the migration thread harvests them. Iteration and counting are not atomic snapshots.
/// </summary>
public sealed class DirtyBitmap
{
    private readonly ulong[] _words;

    /// <summary>Creates an all-clear bitmap of <paramref name="length"/> bits.</summary>
    public DirtyBitmap(long length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        Length = length;
        _words = new ulong[(length + 63) / 64];
    }

    /// <summary>Number of bits (pages).</summary>
    public long Length { get; }

    /// <summary>The words, for bulk hand-off to KVM or a wire format. Not a snapshot: writers may change them.</summary>
    public Span<ulong> Words => _words;

    /// <summary>Sets bit <paramref name="index"/>. Any thread.</summary>
    public void Set(long index)
    {
        CheckIndex(index);
        Interlocked.Or(ref _words[index >> 6], 1UL << (int)(index & 63));
    }

    /// <summary>Sets <paramref name="count"/> bits from <paramref name="start"/>. Any thread.</summary>
    public void SetRange(long start, long count)
    {
        if (count == 0)
        {
            return;
        }

        CheckIndex(start);
        CheckIndex(start + count - 1);
        long end = start + count;
        for (long bit = start; bit < end;)
        {
            int offset = (int)(bit & 63);
            int take = (int)Math.Min(64 - offset, end - bit);
            ulong mask = (take == 64 ? ulong.MaxValue : ((1UL << take) - 1)) << offset;
            Interlocked.Or(ref _words[bit >> 6], mask);
            bit += take;
        }
    }

    /// <summary>True when bit <paramref name="index"/> is set.</summary>
    public bool Test(long index)
    {
        CheckIndex(index);
        return (Volatile.Read(ref _words[index >> 6]) & (1UL << (int)(index & 63))) != 0;
    }

    /// <summary>Clears bit <paramref name="index"/> and says whether it was set. Any thread.</summary>
    public bool TestAndClear(long index)
    {
        CheckIndex(index);
        ulong bit = 1UL << (int)(index & 63);
        return (Interlocked.And(ref _words[index >> 6], ~bit) & bit) != 0;
    }

    /// <summary>Clears every bit.</summary>
    public void ClearAll() => Array.Clear(_words);

    /// <summary>Sets every bit (the first precopy pass sends everything).</summary>
    public void SetAll()
    {
        if (Length > 0)
        {
            SetRange(0, Length);
        }
    }

    /// <summary>Number of set bits.</summary>
    public long Count()
    {
        long count = 0;
        foreach (ulong word in _words)
        {
            count += BitOperations.PopCount(word);
        }

        return count;
    }

    /// <summary>The first set bit at or after <paramref name="from"/>, or -1.</summary>
    public long NextSet(long from)
    {
        if (from >= Length || from < 0)
        {
            return -1;
        }

        int w = (int)(from >> 6);
        ulong word = Volatile.Read(ref _words[w]) & (ulong.MaxValue << (int)(from & 63));
        while (true)
        {
            if (word != 0)
            {
                long bit = ((long)w << 6) + BitOperations.TrailingZeroCount(word);
                return bit < Length ? bit : -1;
            }

            if (++w >= _words.Length)
            {
                return -1;
            }

            word = Volatile.Read(ref _words[w]);
        }
    }

    /// <summary>Enumerates the set bits in ascending order (skips clear words 64 bits at a time).</summary>
    public IEnumerable<long> EnumerateSet()
    {
        for (long bit = NextSet(0); bit >= 0; bit = NextSet(bit + 1))
        {
            yield return bit;
        }
    }

    /// <summary>
    /// ORs <paramref name="bitCount"/> bits of <paramref name="source"/> (bit 0 of word 0 first) into
    /// this bitmap starting at bit <paramref name="firstBit"/>. Atomic per word. Any thread.
    /// </summary>
    public void OrBits(long firstBit, ReadOnlySpan<ulong> source, long bitCount)
    {
        if (bitCount == 0)
        {
            return;
        }

        CheckIndex(firstBit);
        CheckIndex(firstBit + bitCount - 1);
        int words = (int)((bitCount + 63) / 64);
        int shift = (int)(firstBit & 63);
        long baseWord = firstBit >> 6;
        for (int i = 0; i < words; i++)
        {
            ulong value = source[i];
            if (i == words - 1 && (bitCount & 63) != 0)
            {
                value &= (1UL << (int)(bitCount & 63)) - 1;
            }

            if (value == 0)
            {
                continue;
            }

            if (shift == 0)
            {
                Interlocked.Or(ref _words[baseWord + i], value);
            }
            else
            {
                Interlocked.Or(ref _words[baseWord + i], value << shift);
                ulong carry = value >> (64 - shift);
                if (carry != 0)
                {
                    Interlocked.Or(ref _words[baseWord + i + 1], carry);
                }
            }
        }
    }

    /// <summary>Moves every set bit into <paramref name="target"/> (same length), clearing it here; atomic per word.</summary>
    public void DrainInto(DirtyBitmap target)
    {
        ArgumentNullException.ThrowIfNull(target);
        if (target.Length != Length)
        {
            throw new ArgumentException($"Bitmaps differ in length: {Length} and {target.Length} bits.", nameof(target));
        }

        for (int i = 0; i < _words.Length; i++)
        {
            if (Volatile.Read(ref _words[i]) == 0)
            {
                continue;
            }

            ulong taken = Interlocked.Exchange(ref _words[i], 0);
            if (taken != 0)
            {
                Interlocked.Or(ref target._words[i], taken);
            }
        }
    }

    private void CheckIndex(long index)
    {
        if ((ulong)index >= (ulong)Length)
        {
            throw new ArgumentOutOfRangeException(nameof(index), index, $"Bit {index} is outside this {Length}-bit bitmap.");
        }
    }
}
