/*
 * exits: N (ARG, default 100000) 32-bit stores to SINK, then `exits: N` and a newline on the UART, then EXIT 0.
 * Each store is one exit to the VMM; the report costs one more per character (no LSR polling: see hello.S).
 */
	.include "common.inc"

	image_header start
start:
	mov32	x19, TESTDEV
	read_arg 20, 19, 100000
	mov	w21, w20		/* N, for the report */
1:	str	wzr, [x19, #TD_SINK]
	subs	w20, w20, #1
	b.ne	1b
	mov32	x1, UART_BASE
	adr	x2, prefix
2:	ldrb	w3, [x2], #1		/* RAM read: writeback is fine here */
	cbz	w3, 3f
	strb	w3, [x1]
	b	2b
	/* N in decimal: divide by 10^9 .. 10^0, skipping leading zeros but always printing the last digit. */
3:	mov32	w4, 1000000000
	mov	w5, #0			/* nonzero once a digit was printed */
	mov	w6, #10
4:	udiv	w3, w21, w4
	msub	w21, w3, w4, w21
	orr	w5, w5, w3
	cmp	w4, #1
	b.eq	5f
	cbz	w5, 6f
5:	add	w3, w3, #'0'
	strb	w3, [x1]
6:	udiv	w4, w4, w6
	cbnz	w4, 4b
	mov	w3, #'\n'
	strb	w3, [x1]
	mov	w0, #0
	guest_exit

	.section .rodata
prefix:
	.asciz	"exits: "
