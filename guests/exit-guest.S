# The exit guest: prints "X" on COM1, then writes EXIT_VALUE to the isa-debug-exit port 0xf4, which
# ends the VMM process with exit status (EXIT_VALUE << 1) | 1, as QEMU's isa-debug-exit device does.
# Without such a device the write is ignored and the guest halts. Stays in 32-bit protected mode.
#
# Assembly-time options (as --defsym NAME=VALUE):
#   EXIT_VALUE    the byte written to port 0xf4 (default 0x21: exit status 67)

        .ifndef EXIT_VALUE
        .set EXIT_VALUE, 0x21
        .endif
        .set DEBUG_EXIT_PORT, 0xf4

        .include "multiboot-header.inc"

        .text
        .code32
        .globl multiboot_entry
multiboot_entry:
        cli
        mov $stack_top, %esp
        mov $'X', %al
        call serial_putc
        mov $EXIT_VALUE, %al
        out %al, $DEBUG_EXIT_PORT
        HALT_FOREVER

serial_putc:
        SERIAL_PUTC_BODY

        .section .bss
        .balign 16
        .skip 1024
stack_top:
