/*
 * hello: print the greeting on the UART at 0x0900_0000, then EXIT 0.
 *
 * No LSR polling: on QEMU's PL011 at the same address, offset 5 lies in the RSR/ECR word, whose bit 13 reads 0,
 * so waiting for "THRE" would hang there; pyvmm's 16550A is always ready to accept a byte.
 */
	.include "common.inc"

	image_header start
start:
	mov32	x1, UART_BASE
	adr	x2, greeting
1:	ldrb	w3, [x2], #1		/* RAM read: writeback is fine here */
	cbz	w3, 2f
	strb	w3, [x1]
	b	1b
2:	mov	w0, #0
	guest_exit

	.section .rodata
greeting:
	.asciz	"Hello from the pyvmm arm64 guest\n"
