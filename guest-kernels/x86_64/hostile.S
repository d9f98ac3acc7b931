/*
 * hostile: a malicious virtio-blk driver. It finds the first virtio-blk device in the virtio-mmio slots, then runs
 * the phases of ../hostile.inc (unbounded payloads, huge, looping and indirect chains, a zero-length status
 * descriptor, DRIVER_OK without FEATURES_OK, a queue shrunk under chains in flight, floods). After each phase it
 * resets the device, sets it up again and reads sector 1 back: a phase passes when the device still works.
 * Each phase is reported (DATA = phase << 24 | result << 16 | extra << 8 | status byte); then EXIT 0, or
 * EXIT 0x40 + phase when the device did not recover, 0x7F when there is no virtio-blk device.
 * Arguments: phase mask (0 = all), RAM size in MiB (default 256: the descriptors "covering all of RAM" must
 * match the VM's), flood rounds (default 1; 0xFFFFFFFF keeps the device busy until the VM is stopped).
 *
 * The slots are at 0xD000_0000, out of real mode's reach: after entry the guest switches to 32-bit protected
 * mode, paging off, with a flat data segment and a code segment based at the load address (labels stay offsets;
 * data in the image is at LOAD + label). Driver state and rings live in a work area at 1 MiB.
 */
	.include "common.inc"
	.include "hostile.inc"

	.set LOAD, 0x10000
	.set VIRTIO_BASE, 0xD0000000
	.set WORK, 0x100000
	.set STACK, 0x9F000
	.set RAM_BASE, 0
	.set CODE_SEL, 0x08
	.set DATA_SEL, 0x10

/* Register `off` of the device (%esi = its base) := value. */
.macro wreg off, value
	movl	\value, \off(%esi)
.endm

	guest_entry
	lgdtl	gdt_ptr
	mov	%cr0, %eax
	or	$1, %al
	mov	%eax, %cr0
	ljmpl	$CODE_SEL, $protected
	.code32
protected:
	mov	$DATA_SEL, %ax
	mov	%ax, %ds
	mov	%ax, %es
	mov	%ax, %fs
	mov	%ax, %gs
	mov	%ax, %ss
	mov	$STACK, %esp

	read_arg 0xFFFFFFFF
	mov	%eax, WORK + W_MASK
	read_arg 256
	shl	$20, %eax
	mov	%eax, WORK + W_RAM_SIZE
	read_arg 1
	mov	%eax, WORK + W_ROUNDS

	call	find_blk
	jnc	1f
	mov	$EXIT_NO_DEVICE, %al
	jmp	exit
1:	movl	$0, WORK + W_WRITTEN
	mov	$1, %ebp		/* %ebp = the phase */
	btl	$P_NO_FEATURES_OK, WORK + W_MASK
	jc	next_phase		/* that phase must find the device never set up */
	call	dev_init
	jc	broken
next_phase:
	btl	%ebp, WORK + W_MASK
	jnc	2f
	call	*(LOAD + phase_table)(, %ebp, 4)
	mov	%ebp, %ecx
	shl	$24, %ecx
	or	%ecx, %eax
	mov	$TD_DATA, %dx
	outl	%eax, %dx
	call	recover
	jc	broken
2:	inc	%ebp
	cmp	$P_LAST, %ebp
	jbe	next_phase
	xor	%al, %al
	jmp	exit
broken:
	lea	EXIT_BROKEN(%ebp), %eax
exit:					/* status in %al */
	mov	$TD_EXIT, %dx
	outb	%al, %dx
	lidt	LOAD + null_idt		/* no test device: no IDT, so the #UD ends in a triple fault */
	ud2

/* ---- the device (%esi = its base; routines keep %esi, %ebp) ---- */

/* %esi = the first virtio-blk slot; CF set when there is none. */
find_blk:
	mov	$VIRTIO_BASE, %esi
	mov	$VIRTIO_SLOTS, %ecx
1:	cmpl	$VIRTIO_MAGIC, MMIO_MAGIC_VALUE(%esi)
	jne	2f
	cmpl	$ID_BLOCK, MMIO_DEVICE_ID(%esi)
	je	3f
2:	add	$VIRTIO_STRIDE, %esi
	loop	1b
	stc
	ret
3:	clc
	ret

dev_reset:
	wreg	MMIO_STATUS, $0
	movw	$0, WORK + W_AVAIL_IDX
	ret

/* Queue 0: 256 entries, rings in the work area, indices zero, ready. */
dev_setup_queue:
	movl	$0, WORK + W_AVAIL
	movl	$0, WORK + W_USED
	wreg	MMIO_QUEUE_SEL, $0
	wreg	MMIO_QUEUE_NUM, $QSIZE
	wreg	MMIO_QUEUE_DESC_LOW, $(WORK + W_DESC)
	wreg	MMIO_QUEUE_DESC_HIGH, $0
	wreg	MMIO_QUEUE_DRIVER_LOW, $(WORK + W_AVAIL)
	wreg	MMIO_QUEUE_DRIVER_HIGH, $0
	wreg	MMIO_QUEUE_DEVICE_LOW, $(WORK + W_USED)
	wreg	MMIO_QUEUE_DEVICE_HIGH, $0
	wreg	MMIO_QUEUE_READY, $1
	ret

/* Reset and set up the device the way the spec says (3.1.1); CF set when it refuses. Clobbers %eax. */
dev_init:
	call	dev_reset
	wreg	MMIO_STATUS, $S_ACK_DRIVER
	wreg	MMIO_DEVICE_FEATURES_SEL, $0
	mov	MMIO_DEVICE_FEATURES(%esi), %eax
	and	$FEATURES_WANTED, %eax
	wreg	MMIO_DRIVER_FEATURES_SEL, $0
	wreg	MMIO_DRIVER_FEATURES, %eax
	wreg	MMIO_DRIVER_FEATURES_SEL, $1
	wreg	MMIO_DRIVER_FEATURES, $1	/* VERSION_1 */
	wreg	MMIO_STATUS, $(S_ACK_DRIVER | S_FEATURES_OK)
	testl	$S_FEATURES_OK, MMIO_STATUS(%esi)
	jz	1f
	call	dev_setup_queue
	wreg	MMIO_STATUS, $(S_ACK_DRIVER | S_FEATURES_OK | S_DRIVER_OK)
	testl	$S_NEEDS_RESET, MMIO_STATUS(%esi)
	jnz	1f
	clc
	ret
1:	stc
	ret

/* ---- requests ---- */

/* Descriptor at %edi := address %eax, length %ecx, flags | next << 16 in %edx; %edi moves to the next one. */
put_desc:
	mov	%eax, (%edi)
	movl	$0, 4(%edi)
	mov	%ecx, 8(%edi)
	mov	%edx, 12(%edi)
	add	$16, %edi
	ret

/* Descriptor at %edi := the request header, next = 1 / the status byte, device-writable, last. */
header_desc:
	mov	$(WORK + W_HDR), %eax
	mov	$16, %ecx
	mov	$(D_NEXT | 1 << 16), %edx
	jmp	put_desc
status_desc:
	mov	$(WORK + W_STATUS), %eax
	mov	$1, %ecx
	mov	$D_WRITE, %edx
	jmp	put_desc

/* The request header := type %eax, sector %edx; the status byte := STATUS_UNTOUCHED. */
put_header:
	mov	%eax, WORK + W_HDR
	movl	$0, WORK + W_HDR + 4
	mov	%edx, WORK + W_HDR + 8
	movl	$0, WORK + W_HDR + 12
	movb	$STATUS_UNTOUCHED, WORK + W_STATUS
	ret

/* Make the chain at head %eax available (without a notify). Clobbers %ecx, %edx. */
offer:
	movzwl	WORK + W_AVAIL_IDX, %ecx
	mov	%ecx, %edx
	and	$(QSIZE - 1), %edx
	mov	%ax, WORK + W_AVAIL + 4(, %edx, 2)
	inc	%ecx
	mov	%cx, WORK + W_AVAIL_IDX
	mov	%cx, WORK + W_AVAIL + 2
	ret

notify:
	wreg	MMIO_QUEUE_NOTIFY, $0
	ret

/* Wait until every offered chain is used, at most %ecx polls: %eax = R_DONE, R_NEEDS_RESET or R_NO_ANSWER. */
wait_used:
	push	%edx
	mov	$TD_SINK, %dx
1:	out	%eax, %dx		/* one exit per poll (hostile.inc: WAIT_*) */
	mov	WORK + W_USED + 2, %ax
	cmp	WORK + W_AVAIL_IDX, %ax
	je	2f
	testl	$S_NEEDS_RESET, MMIO_STATUS(%esi)
	jnz	3f
	loop	1b
	mov	$R_NO_ANSWER, %eax
	jmp	4f
2:	mov	$R_DONE, %eax
	jmp	4f
3:	mov	$R_NEEDS_RESET, %eax
4:	pop	%edx
	ret

/* Notify, wait (long): %eax = result << 16 | status byte. */
request_result:
	call	notify
	mov	$WAIT_LONG, %ecx
	call	wait_used
with_status:
	shl	$16, %eax
	movzbl	WORK + W_STATUS, %ecx
	or	%ecx, %eax
	ret

/* Head 0 := header (type %eax, sector %edx) -> %ecx bytes at W_DATA (flags %ebx) -> status; offered. */
three_desc:
	push	%ecx
	push	%ebx
	call	put_header
	mov	$(WORK + W_DESC), %edi
	call	header_desc
	pop	%edx
	pop	%ecx
	or	$(D_NEXT | 2 << 16), %edx
	mov	$(WORK + W_DATA), %eax
	call	put_desc
	call	status_desc
	xor	%eax, %eax
	jmp	offer

/* Reset, set up, read sector 1 back: CF clear when the device works and the sector holds the pattern. */
recover:
	call	dev_init
	jc	3f
	mov	$(WORK + W_DATA), %edi
	xor	%eax, %eax
	mov	$128, %ecx
	rep stosl
	mov	$T_IN, %eax
	mov	$1, %edx
	mov	$512, %ecx
	mov	$D_WRITE, %ebx
	call	three_desc
	call	request_result
	test	%eax, %eax		/* R_DONE and status OK */
	jnz	2f
	cmpl	$0, WORK + W_WRITTEN
	je	4f
	mov	$(WORK + W_DATA), %edi
	mov	$PATTERN, %eax
	mov	$128, %ecx
1:	cmp	%eax, (%edi)
	jne	2f
	add	$4, %edi
	inc	%eax
	loop	1b
4:	clc
	ret
2:	stc
3:	ret

/* ---- the phases: entered with the device set up, return the report's low 24 bits in %eax ---- */

phase_write:
	mov	$(WORK + W_DATA), %edi
	mov	$PATTERN, %eax
	mov	$128, %ecx
1:	stosl
	inc	%eax
	loop	1b
	mov	$T_OUT, %eax
	mov	$1, %edx
	mov	$512, %ecx
	xor	%ebx, %ebx
	call	three_desc
	call	request_result
	test	%eax, %eax
	jnz	2f
	movl	$1, WORK + W_WRITTEN
2:	ret

phase_wz_ram:
	mov	$T_WRITE_ZEROES, %eax
	jmp	ram_payload
phase_discard_ram:
	mov	$T_DISCARD, %eax
ram_payload:				/* header -> 8 x all of RAM -> status */
	xor	%edx, %edx
	call	put_header
	mov	$(WORK + W_DESC), %edi
	call	header_desc
	mov	$(D_NEXT | 2 << 16), %edx
1:	mov	$RAM_BASE, %eax
	mov	WORK + W_RAM_SIZE, %ecx
	call	put_desc
	add	$(1 << 16), %edx
	cmp	$(D_NEXT | 10 << 16), %edx
	jne	1b
	call	status_desc
	xor	%eax, %eax
	call	offer
	jmp	request_result

phase_wz_indirect:			/* one INDIRECT descriptor: header -> 32766 x all of RAM -> status */
	mov	$T_WRITE_ZEROES, %eax
	xor	%edx, %edx
	call	put_header
	mov	$(WORK + W_INDIRECT), %edi
	call	header_desc
	mov	$(D_NEXT | 2 << 16), %edx
1:	mov	$RAM_BASE, %eax
	mov	WORK + W_RAM_SIZE, %ecx
	call	put_desc
	add	$(1 << 16), %edx
	cmp	$(D_NEXT | INDIRECT_ENTRIES << 16), %edx
	jne	1b
	call	status_desc
	mov	$(WORK + W_DESC), %edi
	mov	$(WORK + W_INDIRECT), %eax
	mov	$(16 * INDIRECT_ENTRIES), %ecx
	mov	$D_INDIRECT, %edx
	call	put_desc
	xor	%eax, %eax
	call	offer
	jmp	request_result

offer_loop:				/* header -> data -> back to the header, all device-readable */
	mov	$T_IN, %eax
	xor	%edx, %edx
	call	put_header
	mov	$(WORK + W_DESC), %edi
	call	header_desc
	mov	$(WORK + W_DATA), %eax
	mov	$512, %ecx
	mov	$D_NEXT, %edx
	call	put_desc
	xor	%eax, %eax
	jmp	offer

phase_loop:
	call	offer_loop
	jmp	request_result

phase_zero_status:			/* header -> 512 writable -> 0 writable, just after a canary */
	movb	$CANARY, WORK + W_CANARY
	movb	$STATUS_UNTOUCHED, WORK + W_CANARY + 1
	mov	$T_IN, %eax
	xor	%edx, %edx
	call	put_header
	mov	$(WORK + W_DESC), %edi
	call	header_desc
	mov	$(WORK + W_DATA), %eax
	mov	$512, %ecx
	mov	$(D_NEXT | D_WRITE | 2 << 16), %edx
	call	put_desc
	mov	$(WORK + W_CANARY + 1), %eax
	xor	%ecx, %ecx
	mov	$D_WRITE, %edx
	call	put_desc
	xor	%eax, %eax
	call	offer
	call	notify
	mov	$WAIT_LONG, %ecx
	call	wait_used
	shl	$16, %eax
	movzbl	WORK + W_CANARY, %ecx
	shl	$8, %ecx
	or	%ecx, %eax
	movzbl	WORK + W_CANARY + 1, %ecx
	or	%ecx, %eax
	ret

phase_no_features_ok:
	call	dev_reset
	wreg	MMIO_STATUS, $S_ACK_DRIVER
	call	dev_setup_queue
	wreg	MMIO_STATUS, $(S_ACK_DRIVER | S_DRIVER_OK)
	mov	$T_GET_ID, %eax
	xor	%edx, %edx
	mov	$20, %ecx
	mov	$D_WRITE, %ebx
	call	three_desc
	call	notify
	mov	$WAIT_SHORT, %ecx
	call	wait_used
	jmp	with_status

phase_queue_shrink:			/* 85 reads of sector 0 offered, then the queue disabled and shrunk to 0 */
	mov	$T_IN, %eax
	xor	%edx, %edx
	call	put_header
	mov	$(WORK + W_DESC), %edi
	xor	%ebx, %ebx		/* head */
1:	lea	1(%ebx), %edx
	shl	$16, %edx
	or	$D_NEXT, %edx
	mov	$(WORK + W_HDR), %eax
	mov	$16, %ecx
	call	put_desc
	lea	2(%ebx), %edx
	shl	$16, %edx
	or	$(D_NEXT | D_WRITE), %edx
	mov	$(WORK + W_DATA), %eax
	mov	$512, %ecx
	call	put_desc
	call	status_desc
	mov	%ebx, %eax
	call	offer
	add	$3, %ebx
	cmp	$255, %ebx
	jb	1b
	call	notify
	wreg	MMIO_QUEUE_READY, $0
	wreg	MMIO_QUEUE_NUM, $0
	call	notify
	mov	$WAIT_SHORT, %ecx
	call	wait_used
	shl	$16, %eax
	ret

phase_flood:				/* 256 heads, each one INDIRECT table: header -> 254 x 1 byte -> status */
	mov	$T_GET_ID, %eax
	xor	%edx, %edx
	call	put_header
	mov	$(WORK + W_INDIRECT), %edi
	call	header_desc
	mov	$(D_NEXT | D_WRITE | 2 << 16), %edx
1:	mov	$(WORK + W_DATA), %eax
	mov	$1, %ecx
	call	put_desc
	add	$(1 << 16), %edx
	cmp	$(D_NEXT | D_WRITE | FLOOD_ENTRIES << 16), %edx
	jne	1b
	call	status_desc
	mov	$(WORK + W_DESC), %edi
	mov	$QSIZE, %ebx
2:	mov	$(WORK + W_INDIRECT), %eax
	mov	$(16 * FLOOD_ENTRIES), %ecx
	mov	$D_INDIRECT, %edx
	call	put_desc
	dec	%ebx
	jnz	2b
	mov	WORK + W_ROUNDS, %ebx
round:
	xor	%edi, %edi		/* head */
3:	mov	%edi, %eax
	call	offer
	inc	%edi
	cmp	$QSIZE, %edi
	jb	3b
	call	notify
	mov	$0xFFFFFFFF, %ecx	/* as long as the device takes */
	call	wait_used
	cmp	$R_DONE, %eax
	je	4f
	push	%eax			/* refused: set the device up again for the next round */
	call	dev_init
	pop	%eax
4:	dec	%ebx
	jnz	round
	jmp	with_status

phase_break_loop:			/* BREAK_CYCLES x: looping chain, 256 notifies, wait for NEEDS_RESET */
	push	%ebp
	xor	%ebp, %ebp		/* cycles that ended in NEEDS_RESET */
	mov	$BREAK_CYCLES, %ebx
1:	call	dev_init
	call	offer_loop
	push	%ebx
	mov	$QSIZE, %ebx
2:	call	notify
	dec	%ebx
	jnz	2b
	pop	%ebx
	mov	$WAIT_LONG, %ecx
	call	wait_used
	cmp	$R_NEEDS_RESET, %eax
	jne	3f
	inc	%ebp
3:	dec	%ebx
	jnz	1b
	mov	%ebp, %eax
	shl	$8, %eax
	pop	%ebp
	ret

	.section .rodata
	.balign 8
gdt:
	.quad	0
	.quad	0x00CF9A010000FFFF	/* CODE_SEL: 32-bit code, base LOAD (0x10000), 4 GiB */
	.quad	0x00CF92000000FFFF	/* DATA_SEL: data, base 0, 4 GiB */
gdt_end:
gdt_ptr:
	.word	gdt_end - gdt - 1
	.long	gdt + LOAD
null_idt:
	.word	0
	.long	0
	.balign 4
phase_table:				/* indexed by phase */
	.long	0, phase_no_features_ok, phase_write, phase_wz_ram, phase_discard_ram, phase_wz_indirect
	.long	phase_loop, phase_zero_status, phase_queue_shrink, phase_flood, phase_break_loop
