/*
 * idle: report CNTFRQ_EL0 (DATA), then N times (ARG, default 100): arm the EL1 virtual timer P microseconds
 * away (ARG, default 2000), WFI until it fires, report CNTVCT - CVAL in timer ticks (DATA); then EXIT 0.
 *
 * DAIF stays masked: WFI still wakes when an enabled interrupt is pending at the CPU interface, so no vector
 * table and no IAR/EOI handling is needed. The virtual timer's PPI (INTID 27) is level triggered; disabling
 * the timer (CTL = 0) drops the line and with it the pending state.
 */
	.include "common.inc"

	.set GICD_BASE, 0x08000000
	.set GICD_CTLR, 0x0000
	.set GICD_CTLR_RWP, 31
	.set GICD_CTLR_ENABLE, 0x13	/* ARE | EnableGrp1 | EnableGrp0 (single security state) */
	.set GICR_BASE, 0x080A0000	/* redistributor of vCPU 0, RD_base frame */
	.set GICR_WAKER, 0x0014
	.set GICR_WAKER_PSLEEP, 1	/* ProcessorSleep (bit index) */
	.set GICR_WAKER_CASLEEP, 2	/* ChildrenAsleep (bit index) */
	.set GICR_SGI_OFFSET, 0x10000	/* SGI_base frame */
	.set GICR_IGROUPR0, 0x0080
	.set GICR_ISENABLER0, 0x0100
	.set GICR_IPRIORITYR, 0x0400
	.set VTIMER_INTID, 27
	.set VTIMER_PRIO, 0x80
	.set CTL_ENABLE, 1
	.set CTL_ISTATUS, 2		/* bit index */

	image_header start
start:
	mov32	x19, TESTDEV
	read_arg 20, 19, 100		/* w20 = periods left */
	read_arg 21, 19, 2000		/* w21 = period in microseconds */

	/* Distributor: affinity routing, both groups enabled; wait for the write to take effect. */
	mov32	x9, GICD_BASE
	mov	w10, #GICD_CTLR_ENABLE
	str	w10, [x9, #GICD_CTLR]
1:	ldr	w10, [x9, #GICD_CTLR]
	tbnz	w10, #GICD_CTLR_RWP, 1b

	/* Redistributor: wake it, then INTID 27 in group 1, priority 0x80, enabled. */
	mov32	x9, GICR_BASE
	ldr	w10, [x9, #GICR_WAKER]
	bic	w10, w10, #(1 << GICR_WAKER_PSLEEP)
	str	w10, [x9, #GICR_WAKER]
2:	ldr	w10, [x9, #GICR_WAKER]
	tbnz	w10, #GICR_WAKER_CASLEEP, 2b
	add	x11, x9, #GICR_SGI_OFFSET
	ldr	w10, [x11, #GICR_IGROUPR0]
	orr	w10, w10, #(1 << VTIMER_INTID)
	str	w10, [x11, #GICR_IGROUPR0]
	mov	w10, #VTIMER_PRIO
	strb	w10, [x11, #(GICR_IPRIORITYR + VTIMER_INTID)]
	mov	w10, #(1 << VTIMER_INTID)
	str	w10, [x11, #GICR_ISENABLER0]

	/* CPU interface: system-register access, every priority unmasked, group 1 enabled. */
	mov	x10, #1
	msr	icc_sre_el1, x10
	isb
	mov	x10, #0xff
	msr	icc_pmr_el1, x10
	mov	x10, #1
	msr	icc_igrpen1_el1, x10
	isb

	msr	cntv_ctl_el0, xzr
	mrs	x22, cntfrq_el0
	str	x22, [x19, #TD_DATA]
	mul	x23, x21, x22		/* x21 was zero-extended by the 32-bit load */
	mov32	x24, 1000000
	udiv	x23, x23, x24		/* x23 = ticks per period */

period:
	cbz	w20, finished
	isb				/* read the counter after the previous instructions */
	mrs	x10, cntvct_el0
	add	x10, x10, x23
	msr	cntv_cval_el0, x10
	mov	x11, #CTL_ENABLE
	msr	cntv_ctl_el0, x11
	isb
3:	wfi
	mrs	x11, cntv_ctl_el0
	tbz	x11, #CTL_ISTATUS, 3b
	isb
	mrs	x12, cntvct_el0
	sub	x12, x12, x10		/* wake-up latency in ticks */
	str	x12, [x19, #TD_DATA]
	msr	cntv_ctl_el0, xzr
	isb
	sub	w20, w20, #1
	b	period

finished:
	mov	w0, #0
	guest_exit
