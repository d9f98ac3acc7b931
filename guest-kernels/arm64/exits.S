/* exits: N (ARG, default 100000) 32-bit stores to SINK, then EXIT 0. Each store is one exit to the VMM. */
	.include "common.inc"

	image_header start
start:
	mov32	x19, TESTDEV
	read_arg 20, 19, 100000
1:	str	wzr, [x19, #TD_SINK]
	subs	w20, w20, #1
	b.ne	1b
	mov	w0, #0
	guest_exit
