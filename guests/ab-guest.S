# The A/B guest, after the idea of QEMU's migration test guest (tests/migration/i386/a-b-bootblock.S),
# written for Modular as a Multiboot v1 kernel that reaches all RAM, also above 4 GiB.
#
#   1. Reads the usable RAM from the Multiboot memory map (or mem_upper), enters long mode with
#      all of it identity-mapped (include/long-mode.inc).
#   2. Writes 1 to the first byte of every 4 KiB page from 1 MiB to the end of RAM, in ascending
#      address order, then prints 'A' on COM1.
#   3. Forever: increments the first byte of every such page, in the same order, and prints 'B'
#      after every PASSES_PER_B passes.
#
# So at any instant the first bytes, read in address order, are all equal except for at most one
# place where they step down by one (mod 256): the page the current pass has reached. That is what
# Modular.Core.Verification.AbRamCheck (and QEMU's check_guests_ram) verify after a migration.
# COM1 carries only 'A' and 'B' (and an "E: ..." line if the guest cannot run).
#
# Assembly-time options (as --defsym NAME=VALUE):
#   PASSES_PER_B  passes between two 'B's (default 3: one pass over 256 MiB took 0.35 s on this
#                 machine's nested KVM when idle, 0.77 s under heavy load, so a 256 MiB guest prints a
#                 'B' every ~1 s idle, ~2.3 s loaded; QEMU's guest prints one every pass)
#   MAX_GIB       highest RAM address the guest maps, in GiB (default 64)

        .ifndef PASSES_PER_B
        .set PASSES_PER_B, 3
        .endif

        .include "multiboot-header.inc"
        .include "long-mode.inc"

        .text
        .code64
guest_main:
        mov $1, %r9b                            # first pass: write 1 (RAM may not start at zero)
        call first_pass
        mov $'A', %al
        call serial_putc
1:      mov $PASSES_PER_B, %r12d
2:      call increment_pass
        dec %r12d
        jnz 2b
        mov $'B', %al
        call serial_putc
        jmp 1b

# Stores R9B into the first byte of every RAM page above 1 MiB. Clobbers RAX, RCX, RDX, RSI, R8.
first_pass:
        xor %r8d, %r8d
        lea ram_ranges(%rip), %rsi
1:      mov %r8, %rcx
        shl $4, %rcx
        mov (%rsi,%rcx), %rax
        mov 8(%rsi,%rcx), %rdx
2:      mov %r9b, (%rax)
        add $PAGE_SIZE, %rax
        cmp %rdx, %rax
        jb 2b
        inc %r8
        cmp ram_range_count(%rip), %r8
        jb 1b
        ret

# Increments the first byte of every RAM page above 1 MiB, lowest address first. The inner loop is
# four instructions a page, because this machine emulates guest instructions one by one.
# Clobbers RAX, RCX, RDX, RSI, R8.
increment_pass:
        xor %r8d, %r8d
        lea ram_ranges(%rip), %rsi
1:      mov %r8, %rcx
        shl $4, %rcx
        mov (%rsi,%rcx), %rax
        mov 8(%rsi,%rcx), %rdx
        mov $PAGE_SIZE, %ecx
2:      incb (%rax)
        add %rcx, %rax
        cmp %rdx, %rax
        jb 2b
        inc %r8
        cmp ram_range_count(%rip), %r8
        jb 1b
        ret
