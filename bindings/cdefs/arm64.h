/* arm64 KVM structures (arch/arm64/include/uapi/asm/kvm.h, asm/ptrace.h), read by
 * cffi's cdef parser. Only fixed-width types, so the layout cffi computes when this
 * module is generated or loaded on an x86_64 host equals the aarch64 compiler's
 * (both are LP64 with naturally aligned 64-bit integers); checked by
 * tests/unit/test_bindings_layout.py against the arm64 cross headers.
 * Parsed BEFORE common.h (struct kvm_run needs kvm_debug_exit_arch, kvm_sync_regs). */

struct user_pt_regs {
    uint64_t regs[31];
    uint64_t sp;
    uint64_t pc;
    uint64_t pstate;
};

/* The kernel declares `__uint128_t vregs[32]`, which cffi cannot express. Each
 * register is a union of two uint64_t (little-endian: u64[0] = low half) and a
 * `long double`, there only for its 16-byte alignment (size 16, align 16 on both
 * x86_64 and AArch64 Linux): that alignment puts fp_regs at offset 336 in
 * kvm_regs, as in C. Never read _align16 (its format differs per host). */
struct user_fpsimd_state {
    union {
        uint64_t u64[2];
        long double _align16;
    } vregs[32];
    uint32_t fpsr;
    uint32_t fpcr;
    uint32_t __reserved[2];
};

struct kvm_regs {
    struct user_pt_regs regs;       /* regs.sp is SP_EL0 */
    uint64_t sp_el1;
    uint64_t elr_el1;
    uint64_t spsr[5];               /* KVM_NR_SPSR */
    struct user_fpsimd_state fp_regs;
};

struct kvm_vcpu_init {
    uint32_t target;
    uint32_t features[7];
};

struct kvm_debug_exit_arch {
    uint32_t hsr;
    uint32_t hsr_high;              /* ESR_EL2[61:32] */
    uint64_t far;
};

/* kvm_run.s.regs, used with KVM_CAP_ARM_USER_IRQ */
struct kvm_sync_regs {
    uint64_t device_irq_level;
};
