/* hello: print the greeting on the 16550A at 0x3F8, then EXIT 0. */
	.include "common.inc"

	guest_entry
	mov	$greeting, %si
next_char:
	lodsb
	test	%al, %al
	jz	done
	call	putc
	jmp	next_char
done:
	xor	%al, %al
	guest_exit

	uart_putc

	.section .rodata
greeting:
	.asciz	"Hello from the pyvmm x86_64 guest\n"
