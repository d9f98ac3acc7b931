/*
 * exits: N (ARG, default 100000) writes to SINK, then `exits: N` and a newline on the UART, then EXIT 0. Each SINK
 * write is one exit to the VMM; the report costs two more per character (LSR read, THR write).
 */
	.include "common.inc"

	guest_entry
	read_arg 100000
	mov	%eax, %ebx		/* N, for the report */
	mov	%eax, %ecx
	mov	$TD_SINK, %dx
1:	outb	%al, %dx
	dec	%ecx
	jnz	1b
	mov	$prefix, %si
	call	puts
	mov	%ebx, %eax
	call	putdec
	mov	$'\n', %al
	call	putc
	xor	%al, %al
	guest_exit

/* Print the NUL-terminated string at %si. Clobbers %ax, %dx, %si. */
puts:
	lodsb
	test	%al, %al
	jz	2f
	call	putc
	jmp	puts
2:	ret

/* Print %eax in decimal: digits pushed least significant first, popped in order. Clobbers %eax-%edx, %di. */
putdec:
	mov	$10, %ecx
	xor	%di, %di
3:	xor	%edx, %edx
	div	%ecx
	push	%dx
	inc	%di
	test	%eax, %eax
	jnz	3b
4:	pop	%ax
	add	$'0', %al
	call	putc
	dec	%di
	jnz	4b
	ret

	uart_putc

	.section .rodata
prefix:
	.asciz	"exits: "
