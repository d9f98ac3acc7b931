/* exits: N (ARG, default 100000) writes to SINK, then EXIT 0. Each write is one exit to the VMM. */
	.include "common.inc"

	guest_entry
	read_arg 100000
	mov	%eax, %ecx
	mov	$TD_SINK, %dx
1:	outb	%al, %dx
	dec	%ecx
	jnz	1b
	xor	%al, %al
	guest_exit
