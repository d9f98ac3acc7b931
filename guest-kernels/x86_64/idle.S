/*
 * idle: report the PIT frequency (DATA), then N times (ARG, default 100): arm PIT channel 0 as a one-shot
 * (mode 0) P microseconds away (ARG, default 2000), HLT until its IRQ0 arrives through the in-kernel 8259,
 * and report the ticks elapsed since terminal count (DATA); then EXIT 0.
 *
 * One PIT count is 16 bits, so P is clamped to 1..65535 ticks (up to about 54.9 ms). Mode 0 keeps counting
 * down after terminal count (0, 0xFFFF, ...), so the latched count gives the wake-up latency modulo 65536.
 */
	.include "common.inc"

	.set PIT_HZ, 1193182
	.set PIT_CH0, 0x40
	.set PIT_CMD, 0x43
	.set PIT_MODE0, 0x30		/* channel 0, lobyte/hibyte, mode 0, binary */
	.set PIT_LATCH0, 0x00		/* counter latch, channel 0 */
	.set PIC1_CMD, 0x20
	.set PIC1_DATA, 0x21
	.set PIC2_CMD, 0xA0
	.set PIC2_DATA, 0xA1
	.set PIC_EOI, 0x20
	.set IRQ0_VECTOR, 0x20		/* PIC1 vector base: IRQ0..7 -> 0x20..0x27, PIC2 -> 0x28..0x2F */
	.set MAX_PERIOD_US, 54925	/* 54925 us * 1193182 Hz = 65535 ticks */

	guest_entry
	read_arg 100
	mov	%eax, %esi		/* esi = periods left */
	read_arg 2000
	cmp	$MAX_PERIOD_US, %eax	/* also keeps the division below from overflowing */
	jbe	1f
	mov	$MAX_PERIOD_US, %eax
1:	mov	$PIT_HZ, %ecx
	mull	%ecx			/* edx:eax = P * PIT_HZ */
	mov	$1000000, %ecx
	divl	%ecx			/* eax = ticks */
	cmp	$0xFFFF, %eax
	jbe	2f
	mov	$0xFFFF, %eax
2:	test	%eax, %eax		/* a count of 0 would mean 65536 */
	jnz	3f
	inc	%eax
3:	mov	%ax, %di		/* di = PIT count per period */

	/* Real-mode IVT entry for IRQ0 (segment 0, 4 bytes per vector). */
	xor	%ax, %ax
	mov	%ax, %es
	movw	$timer_isr, %es:(IRQ0_VECTOR * 4)
	mov	%cs, %ax
	mov	%ax, %es:(IRQ0_VECTOR * 4 + 2)
	mov	%ax, %es

	/* 8259 pair: ICW1 edge + ICW4 needed, ICW2 vector bases, ICW3 cascade on IRQ2, ICW4 8086 mode. */
	mov	$0x11, %al
	out	%al, $PIC1_CMD
	out	%al, $PIC2_CMD
	mov	$IRQ0_VECTOR, %al
	out	%al, $PIC1_DATA
	mov	$(IRQ0_VECTOR + 8), %al
	out	%al, $PIC2_DATA
	mov	$0x04, %al
	out	%al, $PIC1_DATA
	mov	$0x02, %al
	out	%al, $PIC2_DATA
	mov	$0x01, %al
	out	%al, $PIC1_DATA
	out	%al, $PIC2_DATA
	mov	$0xFE, %al		/* only IRQ0 unmasked */
	out	%al, $PIC1_DATA
	mov	$0xFF, %al
	out	%al, $PIC2_DATA

	mov	$PIT_HZ, %eax
	mov	$TD_DATA, %dx
	outl	%eax, %dx

period:
	test	%esi, %esi
	jz	finished
	movb	$0, ticked
	mov	$PIT_MODE0, %al
	out	%al, $PIT_CMD
	mov	%di, %ax
	out	%al, $PIT_CH0
	mov	%ah, %al
	out	%al, $PIT_CH0
wait:
	sti				/* the STI shadow covers HLT: no wake-up is lost in between */
	hlt
	cli
	cmpb	$0, ticked
	je	wait

	mov	$PIT_LATCH0, %al
	out	%al, $PIT_CMD
	in	$PIT_CH0, %al
	mov	%al, %bl
	in	$PIT_CH0, %al
	mov	%al, %bh
	xor	%eax, %eax
	sub	%bx, %ax		/* ticks since terminal count = (0 - count) mod 65536 */
	mov	$TD_DATA, %dx
	outl	%eax, %dx
	dec	%esi
	jmp	period

finished:
	xor	%al, %al
	guest_exit

timer_isr:
	push	%ax
	movb	$1, %cs:ticked
	mov	$PIC_EOI, %al
	out	%al, $PIC1_CMD
	pop	%ax
	iret

	.data
ticked:
	.byte	0
