# The fill-and-halt guest: writes FILL_VALUE to the first byte of every 4 KiB page from 1 MiB to
# the end of RAM (all of it, also above 4 GiB: include/long-mode.inc), prints 'F' on COM1 and halts.
# All first bytes equal is a state Modular.Core.Verification.AbRamCheck accepts, so a migrated
# fill-halt guest is checked exactly like the A/B guest, with a guest that stays still.
#
# Assembly-time options (as --defsym NAME=VALUE):
#   FILL_VALUE    the byte written (default 0x5a)
#   MAX_GIB       highest RAM address the guest maps, in GiB (default 64)

        .ifndef FILL_VALUE
        .set FILL_VALUE, 0x5a
        .endif

        .include "multiboot-header.inc"
        .include "long-mode.inc"

        .text
        .code64
guest_main:
        xor %r8d, %r8d
        lea ram_ranges(%rip), %rsi
1:      mov %r8, %rcx
        shl $4, %rcx
        mov (%rsi,%rcx), %rax
        mov 8(%rsi,%rcx), %rdx
2:      movb $FILL_VALUE, (%rax)
        add $PAGE_SIZE, %rax
        cmp %rdx, %rax
        jb 2b
        inc %r8
        cmp ram_range_count(%rip), %r8
        jb 1b
        mov $'F', %al
        call serial_putc
        HALT_FOREVER
