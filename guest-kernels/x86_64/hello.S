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

/* Transmit %al once the holding register is empty. Clobbers %dx. */
putc:
	push	%ax
	mov	$COM1_LSR, %dx
1:	inb	%dx, %al
	test	$LSR_THRE, %al
	jz	1b
	pop	%ax
	mov	$COM1, %dx
	outb	%al, %dx
	ret

	.section .rodata
greeting:
	.asciz	"Hello from the pyvmm x86_64 guest\n"
