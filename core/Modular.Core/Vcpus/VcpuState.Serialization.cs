using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Modular.Core.Interop;

namespace Modular.Core.Vcpus;

/// <summary>
/// The byte format of <see cref="VcpuState"/> (little-endian, the host's own struct layouts):
/// <code>
///   u32 magic "MVCS"   u16 version (1)   u16 reserved (0)   u32 total length   u32 vCPU id
///   then, in this order, one record per part:  u8 tag  u32 length  length bytes
///     1 cpuid (n x kvm_cpuid_entry2)  2 regs  3 sregs  4 fpu  5 xsave (variable)  6 xcrs
///     7 msrs (n x kvm_msr_entry)  8 mp_state  9 vcpu_events  10 debugregs
/// </code>
/// Fixed-size parts must have exactly their struct size; a reader refuses anything else with a
/// message naming the part and the offset.
/// </summary>
public sealed partial record VcpuState
{
    /// <summary>"MVCS" read as a little-endian u32.</summary>
    public const uint Magic = 0x5343564D;

    /// <summary>The format version this code writes and reads.</summary>
    public const ushort FormatVersion = 1;

    private const int HeaderSize = 16;
    private const int RecordHeaderSize = 5;

    private enum Part : byte
    {
        Invalid = 0,
        Cpuid = 1,
        Regs = 2,
        Sregs = 3,
        Fpu = 4,
        Xsave = 5,
        Xcrs = 6,
        Msrs = 7,
        MpState = 8,
        Events = 9,
        DebugRegs = 10,
    }

    /// <summary>Bytes <see cref="WriteTo(Span{byte})"/> needs.</summary>
    public int SerializedSize =>
        HeaderSize + (10 * RecordHeaderSize) + Bytes(Cpuid).Length + Bytes(Msrs).Length + Xsave.Length
        + Size<KvmRegs>() + Size<KvmSregs>() + Size<KvmFpu>() + Size<KvmXcrs>() + Size<KvmMpState>()
        + Size<KvmVcpuEvents>() + Size<KvmDebugRegs>();

    /// <summary>Writes the state; returns the number of bytes written (<see cref="SerializedSize"/>).</summary>
    public int WriteTo(Span<byte> destination)
    {
        int total = SerializedSize;
        if (destination.Length < total)
        {
            throw new ArgumentException($"vCPU {VcpuId} state needs {total} bytes, the buffer has {destination.Length}.", nameof(destination));
        }

        BinaryPrimitives.WriteUInt32LittleEndian(destination, Magic);
        BinaryPrimitives.WriteUInt16LittleEndian(destination[4..], FormatVersion);
        BinaryPrimitives.WriteUInt16LittleEndian(destination[6..], 0);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[8..], (uint)total);
        BinaryPrimitives.WriteInt32LittleEndian(destination[12..], VcpuId);
        int at = HeaderSize;
        at = WritePart(destination, at, Part.Cpuid, Bytes(Cpuid));
        at = WritePart(destination, at, Part.Regs, Bytes(Regs));
        at = WritePart(destination, at, Part.Sregs, Bytes(Sregs));
        at = WritePart(destination, at, Part.Fpu, Bytes(Fpu));
        at = WritePart(destination, at, Part.Xsave, Xsave);
        at = WritePart(destination, at, Part.Xcrs, Bytes(Xcrs));
        at = WritePart(destination, at, Part.Msrs, Bytes(Msrs));
        at = WritePart(destination, at, Part.MpState, Bytes(MpState));
        at = WritePart(destination, at, Part.Events, Bytes(Events));
        at = WritePart(destination, at, Part.DebugRegs, Bytes(DebugRegs));
        return at;
    }

    /// <summary>Writes the state to <paramref name="stream"/>.</summary>
    public void WriteTo(Stream stream)
    {
        ArgumentNullException.ThrowIfNull(stream);
        byte[] buffer = new byte[SerializedSize];
        WriteTo(buffer);
        stream.Write(buffer);
    }

    /// <summary>Reads a state written by <see cref="WriteTo(Span{byte})"/>.</summary>
    /// <exception cref="VcpuStateFormatException">Wrong magic, unsupported version, a part missing, of the wrong size, or truncated.</exception>
    public static VcpuState ReadFrom(ReadOnlySpan<byte> source)
    {
        if (source.Length < HeaderSize)
        {
            throw new VcpuStateFormatException($"vCPU state is truncated: the header needs {HeaderSize} bytes, only {source.Length} are there.");
        }

        uint magic = BinaryPrimitives.ReadUInt32LittleEndian(source);
        if (magic != Magic)
        {
            throw new VcpuStateFormatException($"vCPU state does not start with the magic \"MVCS\" (0x{Magic:x8}) but 0x{magic:x8}: this is not vCPU state.");
        }

        ushort version = BinaryPrimitives.ReadUInt16LittleEndian(source[4..]);
        if (version != FormatVersion)
        {
            throw new VcpuStateFormatException($"vCPU state has format version {version}; this build reads version {FormatVersion} only.");
        }

        uint total = BinaryPrimitives.ReadUInt32LittleEndian(source[8..]);
        if (total > (uint)source.Length)
        {
            throw new VcpuStateFormatException($"vCPU state is truncated: the header says {total} bytes, only {source.Length} are there.");
        }

        int vcpuId = BinaryPrimitives.ReadInt32LittleEndian(source[12..]);
        ReadOnlySpan<byte> body = source[..(int)total];
        int at = HeaderSize;
        return new VcpuState
        {
            VcpuId = vcpuId,
            Cpuid = ReadArray<KvmCpuidEntry2>(body, ref at, Part.Cpuid, vcpuId),
            Regs = ReadStruct<KvmRegs>(body, ref at, Part.Regs, vcpuId),
            Sregs = ReadStruct<KvmSregs>(body, ref at, Part.Sregs, vcpuId),
            Fpu = ReadStruct<KvmFpu>(body, ref at, Part.Fpu, vcpuId),
            Xsave = ReadXsave(body, ref at, vcpuId),
            Xcrs = ReadStruct<KvmXcrs>(body, ref at, Part.Xcrs, vcpuId),
            Msrs = ReadArray<KvmMsrEntry>(body, ref at, Part.Msrs, vcpuId),
            MpState = ReadStruct<KvmMpState>(body, ref at, Part.MpState, vcpuId),
            Events = ReadStruct<KvmVcpuEvents>(body, ref at, Part.Events, vcpuId),
            DebugRegs = ReadStruct<KvmDebugRegs>(body, ref at, Part.DebugRegs, vcpuId),
        };
    }

    /// <summary>Reads a state from <paramref name="stream"/> (exactly the bytes the header announces).</summary>
    public static VcpuState ReadFrom(Stream stream)
    {
        ArgumentNullException.ThrowIfNull(stream);
        byte[] header = new byte[HeaderSize];
        int got = stream.ReadAtLeast(header, HeaderSize, throwOnEndOfStream: false);
        if (got < HeaderSize)
        {
            return ReadFrom(header.AsSpan(0, got));
        }

        uint total = BinaryPrimitives.ReadUInt32LittleEndian(header.AsSpan(8));
        if (BinaryPrimitives.ReadUInt32LittleEndian(header) != Magic || total < HeaderSize || total > 64 * 1024 * 1024)
        {
            return ReadFrom(header);
        }

        byte[] all = new byte[total];
        header.CopyTo(all, 0);
        int rest = stream.ReadAtLeast(all.AsSpan(HeaderSize), (int)total - HeaderSize, throwOnEndOfStream: false);
        return ReadFrom(all.AsSpan(0, HeaderSize + rest));
    }

    private static int Size<T>()
        where T : unmanaged => System.Runtime.CompilerServices.Unsafe.SizeOf<T>();

    private static ReadOnlySpan<byte> Bytes<T>(in T value)
        where T : unmanaged => MemoryMarshal.AsBytes(new ReadOnlySpan<T>(in value));

    private static ReadOnlySpan<byte> Bytes<T>(T[] values)
        where T : unmanaged => MemoryMarshal.AsBytes(values.AsSpan());

    private static int WritePart(Span<byte> destination, int at, Part part, ReadOnlySpan<byte> payload)
    {
        destination[at] = (byte)part;
        BinaryPrimitives.WriteUInt32LittleEndian(destination[(at + 1)..], (uint)payload.Length);
        payload.CopyTo(destination[(at + RecordHeaderSize)..]);
        return at + RecordHeaderSize + payload.Length;
    }

    private static ReadOnlySpan<byte> ReadPart(ReadOnlySpan<byte> body, ref int at, Part part, int vcpuId)
    {
        string name = part.ToString().ToLowerInvariant();
        if (body.Length - at < RecordHeaderSize)
        {
            throw new VcpuStateFormatException($"vCPU {vcpuId} state is truncated: part '{name}' should start at offset {at}, but only {body.Length - at} bytes remain.");
        }

        if (body[at] != (byte)part)
        {
            throw new VcpuStateFormatException($"vCPU {vcpuId} state has part tag {body[at]} at offset {at} where part '{name}' (tag {(byte)part}) belongs.");
        }

        uint length = BinaryPrimitives.ReadUInt32LittleEndian(body[(at + 1)..]);
        int start = at + RecordHeaderSize;
        if (length > (uint)(body.Length - start))
        {
            throw new VcpuStateFormatException($"vCPU {vcpuId} state is truncated: part '{name}' at offset {at} needs {length} bytes, only {body.Length - start} remain.");
        }

        at = start + (int)length;
        return body.Slice(start, (int)length);
    }

    private static T ReadStruct<T>(ReadOnlySpan<byte> body, ref int at, Part part, int vcpuId)
        where T : unmanaged
    {
        int offset = at;
        ReadOnlySpan<byte> payload = ReadPart(body, ref at, part, vcpuId);
        if (payload.Length != Size<T>())
        {
            throw new VcpuStateFormatException($"vCPU {vcpuId} state part '{part.ToString().ToLowerInvariant()}' at offset {offset} is {payload.Length} bytes; it must be {Size<T>()}.");
        }

        return MemoryMarshal.Read<T>(payload);
    }

    private static T[] ReadArray<T>(ReadOnlySpan<byte> body, ref int at, Part part, int vcpuId)
        where T : unmanaged
    {
        int offset = at;
        ReadOnlySpan<byte> payload = ReadPart(body, ref at, part, vcpuId);
        if (payload.Length % Size<T>() != 0)
        {
            throw new VcpuStateFormatException($"vCPU {vcpuId} state part '{part.ToString().ToLowerInvariant()}' at offset {offset} is {payload.Length} bytes, not a multiple of its {Size<T>()}-byte entries.");
        }

        return MemoryMarshal.Cast<byte, T>(payload).ToArray();
    }

    private static byte[] ReadXsave(ReadOnlySpan<byte> body, ref int at, int vcpuId)
    {
        int offset = at;
        ReadOnlySpan<byte> payload = ReadPart(body, ref at, Part.Xsave, vcpuId);
        if (payload.Length < 4096)
        {
            throw new VcpuStateFormatException($"vCPU {vcpuId} state part 'xsave' at offset {offset} is {payload.Length} bytes; it must be at least 4096.");
        }

        return payload.ToArray();
    }
}
