using System.Buffers.Binary;
using System.Numerics;
using Modular.Abstractions.Devices;
using Modular.Abstractions.Memory;
using static Modular.Devices.DmaRing.DmaRingLayout;

namespace Modular.Devices.DmaRing;

/// <summary>
/// A DMA ring device: the guest puts descriptors {src, dst, len, op} in a ring in its RAM and kicks;
/// the device copies or checksums the source buffers into the destinations through
/// <see cref="IGuestMemory"/> (so the pages it writes are dirty for migration), marks each descriptor
/// done and advances its consumer index. Protocol and numbers: <see cref="DmaRingLayout"/> and
/// docs/devices.md. Processing is synchronous on the vCPU thread that writes KICK.
/// </summary>
public sealed partial class DmaRingDevice : IDeviceModel
{
    private readonly object _lock = new();
    private readonly IGuestMemory _memory;
    private readonly ushort _base;
    private State _state; // guarded by _lock

    internal DmaRingDevice(string id, ushort basePort, uint instanceId, IGuestMemory memory)
    {
        Id = id;
        _base = basePort;
        _memory = memory;
        Ports = [new IoPortRange(basePort, PortCount)];
        Migration = DeviceMigration.Migratable(new Section(this, instanceId));
    }

    /// <summary>The device's registers and indices, as data: a savevm load swaps in a validated copy.</summary>
    private struct State
    {
        public ulong RingAddress;
        public uint RingSize;
        public bool Enabled;
        public uint Consumer;
        public ulong Completed;
        public DmaRingError Error;
        public uint Select;
    }

    /// <inheritdoc />
    public string Id { get; }

    /// <inheritdoc />
    public IReadOnlyList<IoPortRange> Ports { get; }

    /// <inheritdoc />
    public IReadOnlyList<MmioRange> Mmio { get; } = [];

    /// <inheritdoc />
    public DeviceMigration Migration { get; }

    /// <summary>The ring's guest-physical address as programmed.</summary>
    public GuestPhysicalAddress RingAddress { get { lock (_lock) { return new(_state.RingAddress); } } }

    /// <summary>The number of descriptor slots as programmed.</summary>
    public uint RingSize { get { lock (_lock) { return _state.RingSize; } } }

    /// <summary>True while the ring is enabled.</summary>
    public bool Enabled { get { lock (_lock) { return _state.Enabled; } } }

    /// <summary>The index of the next descriptor the device will process (free-running).</summary>
    public uint ConsumerIndex { get { lock (_lock) { return _state.Consumer; } } }

    /// <summary>Descriptors completed (successfully or with an error status) since creation.</summary>
    public ulong CompletedDescriptors { get { lock (_lock) { return _state.Completed; } } }

    /// <summary>The ERROR register.</summary>
    public DmaRingError LastError { get { lock (_lock) { return _state.Error; } } }

    /// <summary>Guest IN: SELECT at base+0, DATA at base+4; other offsets read 0xff. vCPU thread.</summary>
    public void PortRead(ushort port, Span<byte> data)
    {
        Span<byte> value = stackalloc byte[4];
        lock (_lock)
        {
            int offset = port - _base;
            if (offset == SelectOffset)
            {
                BinaryPrimitives.WriteUInt32LittleEndian(value, _state.Select);
            }
            else if (offset == DataOffset)
            {
                BinaryPrimitives.WriteUInt32LittleEndian(value, ReadRegister(_state.Select));
            }
            else
            {
                data.Fill(0xff);
                return;
            }
        }

        int n = Math.Min(data.Length, 4);
        value[..n].CopyTo(data);
        data[n..].Fill(0xff);
    }

    /// <summary>Guest OUT: SELECT at base+0, DATA at base+4 (zero-extended); other offsets are ignored. vCPU thread.</summary>
    public void PortWrite(ushort port, ReadOnlySpan<byte> data)
    {
        Span<byte> bytes = stackalloc byte[4];
        bytes.Clear();
        data[..Math.Min(data.Length, 4)].CopyTo(bytes);
        uint value = BinaryPrimitives.ReadUInt32LittleEndian(bytes);
        lock (_lock)
        {
            int offset = port - _base;
            if (offset == SelectOffset)
            {
                _state.Select = value;
            }
            else if (offset == DataOffset)
            {
                WriteRegister(_state.Select, value);
            }
        }
    }

    /// <summary>No MMIO; reads return 0xff.</summary>
    public void MmioRead(GuestPhysicalAddress address, Span<byte> data) => data.Fill(0xff);

    /// <summary>No MMIO; writes are ignored.</summary>
    public void MmioWrite(GuestPhysicalAddress address, ReadOnlySpan<byte> data) { }

    /// <inheritdoc />
    public void Dispose() { }

    private uint ReadRegister(uint index) => index switch
    {
        Register.Id => IdValue,
        Register.Version => InterfaceVersion,
        Register.RingAddressLow => (uint)_state.RingAddress,
        Register.RingAddressHigh => (uint)(_state.RingAddress >> 32),
        Register.RingSize => _state.RingSize,
        Register.Control => _state.Enabled ? 1u : 0u,
        Register.Kick => 0,
        Register.Status => (_state.Enabled ? StatusEnabled : 0) | (_state.Error != DmaRingError.None ? StatusError : 0),
        Register.Consumer => _state.Consumer,
        Register.Completed => (uint)_state.Completed,
        Register.Error => (uint)_state.Error,
        _ => 0xffffffff,
    };

    private void WriteRegister(uint index, uint value)
    {
        switch (index)
        {
            case Register.RingAddressLow or Register.RingAddressHigh or Register.RingSize when _state.Enabled:
                _state.Error = DmaRingError.Busy;
                break;
            case Register.RingAddressLow:
                _state.RingAddress = (_state.RingAddress & 0xffffffff_00000000) | value;
                break;
            case Register.RingAddressHigh:
                _state.RingAddress = (_state.RingAddress & 0xffffffff) | ((ulong)value << 32);
                break;
            case Register.RingSize:
                _state.RingSize = value;
                break;
            case Register.Control when (value & 1) != 0:
                if (RingProblem(_state.RingAddress, _state.RingSize) is not null)
                {
                    _state.Error = DmaRingError.BadRing;
                    _state.Enabled = false;
                }
                else
                {
                    _state.Enabled = true;
                    _state.Consumer = 0;
                    _state.Error = DmaRingError.None;
                }

                break;
            case Register.Control:
                _state.Enabled = false;
                break;
            case Register.Kick:
                ProcessRing();
                break;
            default:
                break; // read-only or unknown registers ignore writes
        }
    }

    /// <summary>Why a ring at <paramref name="address"/> with <paramref name="size"/> slots is unusable, or null.</summary>
    private string? RingProblem(ulong address, uint size)
    {
        if (size == 0 || size > MaxRingSize || !BitOperations.IsPow2(size))
        {
            return $"ring size {size} is not a power of two in 1..{MaxRingSize}";
        }

        if (address % RingAlignment != 0 || address > ulong.MaxValue - RingBytes(size))
        {
            return $"ring address 0x{address:x} is not {RingAlignment}-byte aligned";
        }

        return _memory.Contains(new GuestPhysicalAddress(address), RingBytes(size))
            ? null
            : $"ring 0x{address:x}+0x{RingBytes(size):x} is not inside guest RAM (0x{_memory.Size:x} bytes)";
    }
}
