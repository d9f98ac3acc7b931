/*
 * hostile: a malicious virtio-blk driver. It finds the first virtio-blk device in the virtio-mmio slots, then runs
 * the phases of ../hostile.inc (unbounded payloads, huge, looping and indirect chains, a zero-length status
 * descriptor, DRIVER_OK without FEATURES_OK, a queue shrunk under chains in flight, floods). After each phase it
 * resets the device, sets it up again and reads sector 1 back: a phase passes when the device still works.
 * Each phase is reported (DATA = phase << 24 | result << 16 | extra << 8 | status byte); then EXIT 0, or
 * EXIT 0x40 + phase when the device did not recover, 0x7F when there is no virtio-blk device.
 * Arguments: phase mask (0 = all), RAM size in MiB (default: pyvmm puts the DTB 2 MiB below the end of RAM),
 * flood rounds (default 1; 0xFFFFFFFF keeps the device busy until the VM is stopped).
 *
 * MMU off: every access is Device-nGnRnE, so all of them are naturally aligned. The work area (rings, tables)
 * and the stack sit 1 MiB above the image. Registers kept throughout: x19 test device, x20 virtio slot,
 * x21 work area, x22 RAM base, x23 RAM size, x24 flood rounds, x25 phase mask, x26 phase, x28 pattern written.
 * Routines clobber x0-x12 (and x7 walks descriptors); x13-x15 are loop variables of the phases.
 */
	.include "common.inc"
	.include "hostile.inc"

	.set VIRTIO_BASE, 0x0A000000
	.set RAM_BASE, 0x40000000
	.set DTB_TO_RAM_END, 0x200000
	.set WORK_OFFSET, 0x100000
	.set STACK_SIZE, 0x10000

/* \reg := the address of work-area offset \off */
.macro work reg, off
	mov32	\reg, \off
	add	\reg, x21, \reg
.endm

.macro enter
	stp	x29, x30, [sp, #-16]!
.endm

.macro leave
	ldp	x29, x30, [sp], #16
	ret
.endm

	image_header start
start:
	mov	x27, x0			/* the DTB */
	adr	x21, _head
	add	x21, x21, #WORK_OFFSET
	mov32	x9, W_SIZE + STACK_SIZE
	add	x9, x21, x9
	mov	sp, x9
	mov32	x19, TESTDEV
	mov32	x22, RAM_BASE
	read_arg 25, 19, 0xFFFFFFFF
	ldr	w23, [x19, #TD_ARG]
	cbz	w23, 1f
	lsl	x23, x23, #20
	b	2f
1:	add	x23, x27, #DTB_TO_RAM_END
	sub	x23, x23, x22
2:	read_arg 24, 19, 1
	bl	find_blk
	cbnz	x20, 3f
	mov	w0, #EXIT_NO_DEVICE
	b	exit
3:	mov	w28, #0
	mov	w26, #1
	tbnz	w25, #P_NO_FEATURES_OK, next_phase	/* that phase must find the device never set up */
	bl	dev_init
	cbnz	w0, broken
next_phase:
	lsr	w9, w25, w26
	tbz	w9, #0, 4f
	adr	x9, phase_table
	ldrsw	x10, [x9, x26, lsl #2]
	add	x10, x9, x10
	blr	x10
	orr	w0, w0, w26, lsl #24
	str	w0, [x19, #TD_DATA]
	bl	recover
	cbnz	w0, broken
4:	add	w26, w26, #1
	cmp	w26, #P_LAST
	b.ls	next_phase
	mov	w0, #0
	b	exit
broken:
	add	w0, w26, #EXIT_BROKEN
exit:
	guest_exit

/* ---- the device (x20 = its base) ---- */

/* x20 = the first virtio-blk slot, 0 when there is none. */
find_blk:
	mov32	x20, VIRTIO_BASE
	mov	w9, #VIRTIO_SLOTS
	mov32	w11, VIRTIO_MAGIC
1:	ldr	w10, [x20, #MMIO_MAGIC_VALUE]
	cmp	w10, w11
	b.ne	2f
	ldr	w10, [x20, #MMIO_DEVICE_ID]
	cmp	w10, #ID_BLOCK
	b.eq	3f
2:	add	x20, x20, #VIRTIO_STRIDE
	subs	w9, w9, #1
	b.ne	1b
	mov	x20, #0
3:	ret

dev_reset:
	str	wzr, [x20, #MMIO_STATUS]
	work	x9, W_AVAIL_IDX
	strh	wzr, [x9]
	ret

/* Queue 0: 256 entries, rings in the work area, indices zero, ready. */
dev_setup_queue:
	work	x9, W_AVAIL
	str	wzr, [x9]
	work	x9, W_USED
	str	wzr, [x9]
	dsb	sy
	str	wzr, [x20, #MMIO_QUEUE_SEL]
	mov	w9, #QSIZE
	str	w9, [x20, #MMIO_QUEUE_NUM]
	work	x9, W_DESC
	str	w9, [x20, #MMIO_QUEUE_DESC_LOW]
	lsr	x9, x9, #32
	str	w9, [x20, #MMIO_QUEUE_DESC_HIGH]
	work	x9, W_AVAIL
	str	w9, [x20, #MMIO_QUEUE_DRIVER_LOW]
	lsr	x9, x9, #32
	str	w9, [x20, #MMIO_QUEUE_DRIVER_HIGH]
	work	x9, W_USED
	str	w9, [x20, #MMIO_QUEUE_DEVICE_LOW]
	lsr	x9, x9, #32
	str	w9, [x20, #MMIO_QUEUE_DEVICE_HIGH]
	mov	w9, #1
	str	w9, [x20, #MMIO_QUEUE_READY]
	ret

/* Reset and set up the device the way the spec says (3.1.1): w0 = 0, or 1 when it refuses. */
dev_init:
	enter
	bl	dev_reset
	mov	w9, #S_ACK_DRIVER
	str	w9, [x20, #MMIO_STATUS]
	str	wzr, [x20, #MMIO_DEVICE_FEATURES_SEL]
	ldr	w9, [x20, #MMIO_DEVICE_FEATURES]
	mov32	w10, FEATURES_WANTED
	and	w9, w9, w10
	str	wzr, [x20, #MMIO_DRIVER_FEATURES_SEL]
	str	w9, [x20, #MMIO_DRIVER_FEATURES]
	mov	w9, #1
	str	w9, [x20, #MMIO_DRIVER_FEATURES_SEL]
	str	w9, [x20, #MMIO_DRIVER_FEATURES]	/* VERSION_1 */
	mov	w9, #(S_ACK_DRIVER | S_FEATURES_OK)
	str	w9, [x20, #MMIO_STATUS]
	ldr	w9, [x20, #MMIO_STATUS]
	tbz	w9, #3, 1f			/* FEATURES_OK refused */
	bl	dev_setup_queue
	mov	w9, #(S_ACK_DRIVER | S_FEATURES_OK | S_DRIVER_OK)
	str	w9, [x20, #MMIO_STATUS]
	ldr	w9, [x20, #MMIO_STATUS]
	tbnz	w9, #6, 1f			/* NEEDS_RESET */
	mov	w0, #0
	leave
1:	mov	w0, #1
	leave

/* ---- requests ---- */

/* Descriptor at x7 := address x0, length w1, flags | next << 16 in w2; x7 moves to the next one. */
put_desc:
	str	x0, [x7]
	str	w1, [x7, #8]
	str	w2, [x7, #12]
	add	x7, x7, #16
	ret

/* Descriptor at x7 := the request header, next = 1 / the status byte, device-writable, last. */
header_desc:
	work	x0, W_HDR
	mov	w1, #16
	mov32	w2, D_NEXT | 1 << 16
	b	put_desc
status_desc:
	work	x0, W_STATUS
	mov	w1, #1
	mov	w2, #D_WRITE
	b	put_desc

/* The request header := type w0, sector w1; the status byte := STATUS_UNTOUCHED. */
put_header:
	work	x9, W_HDR
	str	w0, [x9]
	str	wzr, [x9, #4]
	str	w1, [x9, #8]
	str	wzr, [x9, #12]
	work	x9, W_STATUS
	mov	w10, #STATUS_UNTOUCHED
	strb	w10, [x9]
	ret

/* Make the chain at head w0 available (without a notify). */
offer:
	work	x9, W_AVAIL_IDX
	ldrh	w10, [x9]
	and	w11, w10, #(QSIZE - 1)
	work	x12, W_AVAIL + 4
	strh	w0, [x12, x11, lsl #1]
	add	w10, w10, #1
	strh	w10, [x9]
	dmb	sy			/* the ring entry before the index that publishes it */
	work	x12, W_AVAIL + 2
	strh	w10, [x12]
	ret

notify:
	dsb	sy			/* the rings before the notification */
	str	wzr, [x20, #MMIO_QUEUE_NOTIFY]
	ret

/* Wait until every offered chain is used, at most w1 polls: w0 = R_DONE, R_NEEDS_RESET or R_NO_ANSWER. */
wait_used:
	work	x9, W_USED + 2
	work	x10, W_AVAIL_IDX
1:	str	wzr, [x19, #TD_SINK]	/* one exit per poll (hostile.inc: WAIT_*) */
	ldrh	w11, [x9]
	ldrh	w12, [x10]
	cmp	w11, w12
	b.eq	2f
	ldr	w11, [x20, #MMIO_STATUS]
	tbnz	w11, #6, 3f
	subs	w1, w1, #1
	b.ne	1b
	mov	w0, #R_NO_ANSWER
	ret
2:	dmb	sy			/* what the device wrote, after the index */
	mov	w0, #R_DONE
	ret
3:	mov	w0, #R_NEEDS_RESET
	ret

/* w0 := w0 << 16 | the status byte */
with_status:
	work	x9, W_STATUS
	ldrb	w10, [x9]
	orr	w0, w10, w0, lsl #16
	ret

/* Notify, wait (long): w0 = result << 16 | status byte. */
request_result:
	enter
	bl	notify
	mov32	w1, WAIT_LONG
	bl	wait_used
	bl	with_status
	leave

/* Head 0 := header (type w0, sector w1) -> w2 bytes at W_DATA (flags w3) -> status; offered. */
three_desc:
	enter
	mov	w13, w2
	mov	w14, w3
	bl	put_header
	work	x7, W_DESC
	bl	header_desc
	work	x0, W_DATA
	mov	w1, w13
	mov32	w2, D_NEXT | 2 << 16
	orr	w2, w2, w14
	bl	put_desc
	bl	status_desc
	mov	w0, #0
	bl	offer
	leave

/* Reset, set up, read sector 1 back: w0 = 0 when the device works (and the sector holds the pattern once
   P_WRITE wrote it), else 1. */
recover:
	enter
	bl	dev_init
	cbnz	w0, 3f
	work	x9, W_DATA
	mov	w11, #128
1:	str	wzr, [x9], #4
	subs	w11, w11, #1
	b.ne	1b
	mov	w0, #T_IN
	mov	w1, #1
	mov	w2, #512
	mov	w3, #D_WRITE
	bl	three_desc
	bl	request_result
	cbnz	w0, 3f
	cbz	w28, 4f
	work	x9, W_DATA
	mov32	w10, PATTERN
	mov	w11, #128
2:	ldr	w12, [x9], #4
	cmp	w12, w10
	b.ne	3f
	add	w10, w10, #1
	subs	w11, w11, #1
	b.ne	2b
4:	mov	w0, #0
	leave
3:	mov	w0, #1
	leave

/* ---- the phases: entered with the device set up, return the report's low 24 bits in w0 ---- */

phase_no_features_ok:
	enter
	bl	dev_reset
	mov	w9, #S_ACK_DRIVER
	str	w9, [x20, #MMIO_STATUS]
	bl	dev_setup_queue
	mov	w9, #(S_ACK_DRIVER | S_DRIVER_OK)
	str	w9, [x20, #MMIO_STATUS]
	mov	w0, #T_GET_ID
	mov	w1, #0
	mov	w2, #20
	mov	w3, #D_WRITE
	bl	three_desc
	bl	notify
	mov32	w1, WAIT_SHORT
	bl	wait_used
	bl	with_status
	leave

phase_write:
	enter
	work	x9, W_DATA
	mov32	w10, PATTERN
	mov	w11, #128
1:	str	w10, [x9], #4
	add	w10, w10, #1
	subs	w11, w11, #1
	b.ne	1b
	mov	w0, #T_OUT
	mov	w1, #1
	mov	w2, #512
	mov	w3, #0
	bl	three_desc
	bl	request_result
	cbnz	w0, 2f
	mov	w28, #1
2:	leave

phase_wz_ram:
	mov	w0, #T_WRITE_ZEROES
	b	ram_payload
phase_discard_ram:
	mov	w0, #T_DISCARD
ram_payload:				/* header -> 8 x all of RAM -> status */
	enter
	mov	w1, #0
	bl	put_header
	work	x7, W_DESC
	bl	header_desc
	mov32	w2, D_NEXT | 2 << 16
	mov32	w13, D_NEXT | 10 << 16
1:	mov	x0, x22
	mov	w1, w23
	bl	put_desc
	add	w2, w2, #(1 << 4), lsl #12
	cmp	w2, w13
	b.ne	1b
	bl	status_desc
	mov	w0, #0
	bl	offer
	bl	request_result
	leave

phase_wz_indirect:			/* one INDIRECT descriptor: header -> 32766 x all of RAM -> status */
	enter
	mov	w0, #T_WRITE_ZEROES
	mov	w1, #0
	bl	put_header
	work	x7, W_INDIRECT
	bl	header_desc
	mov32	w2, D_NEXT | 2 << 16
	mov32	w13, D_NEXT | INDIRECT_ENTRIES << 16
1:	mov	x0, x22
	mov	w1, w23
	bl	put_desc
	add	w2, w2, #(1 << 4), lsl #12
	cmp	w2, w13
	b.ne	1b
	bl	status_desc
	work	x7, W_DESC
	work	x0, W_INDIRECT
	mov32	w1, 16 * INDIRECT_ENTRIES
	mov	w2, #D_INDIRECT
	bl	put_desc
	mov	w0, #0
	bl	offer
	bl	request_result
	leave

offer_loop:				/* header -> data -> back to the header, all device-readable */
	enter
	mov	w0, #T_IN
	mov	w1, #0
	bl	put_header
	work	x7, W_DESC
	bl	header_desc
	work	x0, W_DATA
	mov	w1, #512
	mov	w2, #D_NEXT
	bl	put_desc
	mov	w0, #0
	bl	offer
	leave

phase_loop:
	enter
	bl	offer_loop
	bl	request_result
	leave

phase_zero_status:			/* header -> 512 writable -> 0 writable, just after a canary */
	enter
	work	x9, W_CANARY
	mov	w10, #CANARY
	strb	w10, [x9]
	mov	w10, #STATUS_UNTOUCHED
	strb	w10, [x9, #1]
	mov	w0, #T_IN
	mov	w1, #0
	bl	put_header
	work	x7, W_DESC
	bl	header_desc
	work	x0, W_DATA
	mov	w1, #512
	mov32	w2, D_NEXT | D_WRITE | 2 << 16
	bl	put_desc
	work	x0, W_CANARY + 1
	mov	w1, #0
	mov	w2, #D_WRITE
	bl	put_desc
	mov	w0, #0
	bl	offer
	bl	notify
	mov32	w1, WAIT_LONG
	bl	wait_used
	work	x9, W_CANARY
	ldrb	w10, [x9]
	ldrb	w11, [x9, #1]
	lsl	w0, w0, #16
	orr	w0, w0, w10, lsl #8
	orr	w0, w0, w11
	leave

phase_queue_shrink:			/* 85 reads of sector 0 offered, then the queue disabled and shrunk to 0 */
	enter
	mov	w0, #T_IN
	mov	w1, #0
	bl	put_header
	work	x7, W_DESC
	mov	w15, #0			/* head */
1:	work	x0, W_HDR
	mov	w1, #16
	add	w2, w15, #1
	lsl	w2, w2, #16
	orr	w2, w2, #D_NEXT
	bl	put_desc
	work	x0, W_DATA
	mov	w1, #512
	add	w2, w15, #2
	lsl	w2, w2, #16
	orr	w2, w2, #(D_NEXT | D_WRITE)
	bl	put_desc
	bl	status_desc
	mov	w0, w15
	bl	offer
	add	w15, w15, #3
	cmp	w15, #255
	b.lo	1b
	bl	notify
	str	wzr, [x20, #MMIO_QUEUE_READY]
	str	wzr, [x20, #MMIO_QUEUE_NUM]
	bl	notify
	mov32	w1, WAIT_SHORT
	bl	wait_used
	lsl	w0, w0, #16
	leave

phase_flood:				/* 256 heads, each one INDIRECT table: header -> 254 x 1 byte -> status */
	enter
	mov	w0, #T_GET_ID
	mov	w1, #0
	bl	put_header
	work	x7, W_INDIRECT
	bl	header_desc
	mov32	w2, D_NEXT | D_WRITE | 2 << 16
	mov32	w13, D_NEXT | D_WRITE | FLOOD_ENTRIES << 16
1:	work	x0, W_DATA
	mov	w1, #1
	bl	put_desc
	add	w2, w2, #(1 << 4), lsl #12
	cmp	w2, w13
	b.ne	1b
	bl	status_desc
	work	x7, W_DESC
	mov	w15, #QSIZE
2:	work	x0, W_INDIRECT
	mov32	w1, 16 * FLOOD_ENTRIES
	mov	w2, #D_INDIRECT
	bl	put_desc
	subs	w15, w15, #1
	b.ne	2b
	mov	w14, w24		/* rounds */
round:
	mov	w15, #0			/* head */
3:	mov	w0, w15
	bl	offer
	add	w15, w15, #1
	cmp	w15, #QSIZE
	b.lo	3b
	bl	notify
	mov	w1, #0xFFFFFFFF		/* as long as the device takes */
	bl	wait_used
	cbz	w0, 4f
	mov	w15, w0			/* refused: set the device up again for the next round */
	bl	dev_init
	mov	w0, w15
4:	subs	w14, w14, #1
	b.ne	round
	bl	with_status
	leave

phase_break_loop:			/* BREAK_CYCLES x: looping chain, 256 notifies, wait for NEEDS_RESET */
	enter
	mov	w14, #BREAK_CYCLES
	mov	w15, #0			/* cycles that ended in NEEDS_RESET */
1:	bl	dev_init
	bl	offer_loop
	mov	w13, #QSIZE
2:	bl	notify
	subs	w13, w13, #1
	b.ne	2b
	mov32	w1, WAIT_LONG
	bl	wait_used
	cmp	w0, #R_NEEDS_RESET
	b.ne	3f
	add	w15, w15, #1
3:	subs	w14, w14, #1
	b.ne	1b
	lsl	w0, w15, #8
	leave

	.balign 4
phase_table:				/* indexed by phase: offsets from the table (position independent) */
	.long	0
	.long	phase_no_features_ok - phase_table
	.long	phase_write - phase_table
	.long	phase_wz_ram - phase_table
	.long	phase_discard_ram - phase_table
	.long	phase_wz_indirect - phase_table
	.long	phase_loop - phase_table
	.long	phase_zero_status - phase_table
	.long	phase_queue_shrink - phase_table
	.long	phase_flood - phase_table
	.long	phase_break_loop - phase_table
