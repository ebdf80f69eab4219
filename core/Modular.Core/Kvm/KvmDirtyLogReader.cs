using Modular.Core.Memory;

namespace Modular.Core.Kvm;

/// <summary>One KVM slot that backs part of a RAM block.</summary>
internal sealed record KvmDirtyLogSlot(uint Slot, RamBlock Block, RamRegion Region);

/// <summary>
/// Reads KVM's dirty log for the slots of a <see cref="GuestRam"/> and merges it into a block's
/// bitmap. With manual protect (the normal case) it fetches (KVM_GET_DIRTY_LOG) and then
/// re-protects exactly what it fetched (KVM_CLEAR_DIRTY_LOG) before the caller copies any page, so
/// a guest write after the clear is seen by the next pass. Runs on the migration thread.
/// </summary>
internal sealed class KvmDirtyLogReader : IGuestDirtyLog
{
    private const int PageShift = 12;
    private readonly KvmVm _vm;
    private readonly KvmDirtyLogSlot[] _slots;
    private readonly ulong[][] _scratch;

    internal KvmDirtyLogReader(KvmVm vm, IReadOnlyList<KvmDirtyLogSlot> slots)
    {
        _vm = vm;
        _slots = slots.ToArray();
        _scratch = _slots.Select(s => new ulong[(int)(((s.Region.Size >> PageShift) + 63) / 64)]).ToArray();
    }

    /// <inheritdoc />
    public void CollectInto(RamBlock block, DirtyBitmap into, bool rearm)
    {
        for (int i = 0; i < _slots.Length; i++)
        {
            KvmDirtyLogSlot slot = _slots[i];
            if (!ReferenceEquals(slot.Block, block))
            {
                continue;
            }

            ulong[] words = _scratch[i];
            ulong pages = slot.Region.Size >> PageShift;
            _vm.GetDirtyLog(slot.Slot, words);
            if (Array.TrueForAll(words, w => w == 0))
            {
                continue;
            }

            if (_vm.ManualDirtyLogProtect && rearm)
            {
                // Re-protect before anyone copies these pages: a guest write racing with the copy
                // then lands in the next pass instead of being lost.
                _vm.ClearDirtyLog(slot.Slot, 0, (uint)pages, words);
            }

            into.OrBits((long)(slot.Region.BlockOffset >> PageShift), words, (long)pages);
        }
    }
}
