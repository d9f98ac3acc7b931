/* Architecture-independent KVM structures (include/uapi/linux/kvm.h) plus libc's
 * ioctl, read by cffi's cdef parser after <arch>.h. Only fixed-width types (plus
 * char), so ABI-mode layouts are the same whichever host generates them. */

/* ioctl(2) is variadic in <sys/ioctl.h>, but on x86_64 (SysV) and AArch64 Linux
 * (AAPCS64; Apple's arm64 ABI differs, Linux's does not) integer and pointer
 * variadic arguments are passed exactly like fixed ones, in general-purpose
 * registers. Declaring it non-variadic is therefore ABI-correct there and makes a
 * cffi ABI-mode call cost 0.80 us instead of 2.07 us (measured on this project's
 * x86_64 host). Pass integer arguments as ffi.cast("void *", n). */
int ioctl(int fd, unsigned long request, void *arg);

struct kvm_run {
    /* in */
    uint8_t request_interrupt_window;
    uint8_t immediate_exit;
    uint8_t padding1[6];
    /* out */
    uint32_t exit_reason;
    uint8_t ready_for_interrupt_injection;
    uint8_t if_flag;
    uint16_t flags;
    /* in (pre_kvm_run), out (post_kvm_run) */
    uint64_t cr8;
    uint64_t apic_base;
    union {
        /* KVM_EXIT_UNKNOWN */
        struct {
            uint64_t hardware_exit_reason;
        } hw;
        /* KVM_EXIT_FAIL_ENTRY */
        struct {
            uint64_t hardware_entry_failure_reason;
            uint32_t cpu;
        } fail_entry;
        /* KVM_EXIT_EXCEPTION */
        struct {
            uint32_t exception;
            uint32_t error_code;
        } ex;
        /* KVM_EXIT_IO; data lives at (char *)run + io.data_offset */
        struct {
            uint8_t direction;      /* KVM_EXIT_IO_IN / KVM_EXIT_IO_OUT */
            uint8_t size;           /* bytes */
            uint16_t port;
            uint32_t count;
            uint64_t data_offset;
        } io;
        /* KVM_EXIT_DEBUG */
        struct {
            struct kvm_debug_exit_arch arch;
        } debug;
        /* KVM_EXIT_MMIO */
        struct {
            uint64_t phys_addr;
            uint8_t data[8];
            uint32_t len;
            uint8_t is_write;
        } mmio;
        /* KVM_EXIT_HYPERCALL */
        struct {
            uint64_t nr;
            uint64_t args[6];
            uint64_t ret;
            uint32_t longmode;
            uint32_t pad;
        } hypercall;
        /* KVM_EXIT_TPR_ACCESS */
        struct {
            uint64_t rip;
            uint32_t is_write;
            uint32_t pad;
        } tpr_access;
        /* KVM_EXIT_INTERNAL_ERROR */
        struct {
            uint32_t suberror;
            uint32_t ndata;
            uint64_t data[16];
        } internal;
        /* KVM_EXIT_INTERNAL_ERROR with suberror KVM_INTERNAL_ERROR_EMULATION */
        struct {
            uint32_t suberror;
            uint32_t ndata;
            uint64_t flags;
            union {
                struct {
                    uint8_t insn_size;
                    uint8_t insn_bytes[15];
                };
            };
        } emulation_failure;
        /* KVM_EXIT_SYSTEM_EVENT */
        struct {
            uint32_t type;          /* KVM_SYSTEM_EVENT_* */
            uint32_t ndata;
            union {
                uint64_t flags;
                uint64_t data[16];
            };
        } system_event;
        /* KVM_EXIT_IOAPIC_EOI */
        struct {
            uint8_t vector;
        } eoi;
        /* KVM_EXIT_ARM_NISV */
        struct {
            uint64_t esr_iss;
            uint64_t fault_ipa;
        } arm_nisv;
        /* KVM_EXIT_X86_RDMSR / KVM_EXIT_X86_WRMSR */
        struct {
            uint8_t error;          /* user -> kernel */
            uint8_t pad[7];
            uint32_t reason;        /* kernel -> user */
            uint32_t index;         /* kernel -> user */
            uint64_t data;          /* kernel <-> user */
        } msr;
        /* KVM_EXIT_NOTIFY */
        struct {
            uint32_t flags;
        } notify;
        /* Fixes the size of the union, as in the kernel header. */
        char padding[256];
    };
    /* register classes valid in / dirtied in s.regs (KVM_CAP_SYNC_REGS) */
    uint64_t kvm_valid_regs;
    uint64_t kvm_dirty_regs;
    union {
        struct kvm_sync_regs regs;
        char padding[2048];         /* SYNC_REGS_SIZE_BYTES */
    } s;
};

struct kvm_coalesced_mmio_zone {
    uint64_t addr;
    uint32_t size;
    union {
        uint32_t pad;
        uint32_t pio;
    };
};

struct kvm_coalesced_mmio {
    uint64_t phys_addr;
    uint32_t len;
    union {
        uint32_t pad;
        uint32_t pio;
    };
    uint8_t data[8];
};

/* The shared page at KVM_COALESCED_MMIO_PAGE_OFFSET of the vCPU mmap */
struct kvm_coalesced_mmio_ring {
    uint32_t first, last;
    struct kvm_coalesced_mmio coalesced_mmio[];
};

struct kvm_userspace_memory_region {
    uint32_t slot;
    uint32_t flags;                 /* KVM_MEM_* */
    uint64_t guest_phys_addr;
    uint64_t memory_size;
    uint64_t userspace_addr;
};

struct kvm_irq_level {
    union {
        uint32_t irq;
        int32_t status;
    };
    uint32_t level;
};

struct kvm_signal_mask {
    uint32_t len;
    uint8_t sigset[];
};

struct kvm_mp_state {
    uint32_t mp_state;              /* KVM_MP_STATE_* */
};

struct kvm_ioeventfd {
    uint64_t datamatch;
    uint64_t addr;
    uint32_t len;
    int32_t fd;
    uint32_t flags;                 /* KVM_IOEVENTFD_FLAG_* */
    uint8_t pad[36];
};

struct kvm_enable_cap {
    uint32_t cap;
    uint32_t flags;
    uint64_t args[4];
    uint8_t pad[64];
};

struct kvm_irq_routing_irqchip {
    uint32_t irqchip;
    uint32_t pin;
};

struct kvm_irq_routing_msi {
    uint32_t address_lo;
    uint32_t address_hi;
    uint32_t data;
    union {
        uint32_t pad;
        uint32_t devid;
    };
};

struct kvm_irq_routing_s390_adapter {
    uint64_t ind_addr;
    uint64_t summary_addr;
    uint64_t ind_offset;
    uint32_t summary_offset;
    uint32_t adapter_id;
};

struct kvm_irq_routing_hv_sint {
    uint32_t vcpu;
    uint32_t sint;
};

struct kvm_irq_routing_xen_evtchn {
    uint32_t port;
    uint32_t vcpu;
    uint32_t priority;
};

struct kvm_irq_routing_entry {
    uint32_t gsi;
    uint32_t type;                  /* KVM_IRQ_ROUTING_* */
    uint32_t flags;
    uint32_t pad;
    union {
        struct kvm_irq_routing_irqchip irqchip;
        struct kvm_irq_routing_msi msi;
        struct kvm_irq_routing_s390_adapter adapter;
        struct kvm_irq_routing_hv_sint hv_sint;
        struct kvm_irq_routing_xen_evtchn xen_evtchn;
        uint32_t pad[8];
    } u;
};

struct kvm_irq_routing {
    uint32_t nr;
    uint32_t flags;
    struct kvm_irq_routing_entry entries[];
};

struct kvm_irqfd {
    uint32_t fd;
    uint32_t gsi;
    uint32_t flags;                 /* KVM_IRQFD_FLAG_* */
    uint32_t resamplefd;
    uint8_t pad[16];
};

struct kvm_reg_list {
    uint64_t n;
    uint64_t reg[];
};

struct kvm_one_reg {
    uint64_t id;
    uint64_t addr;
};

struct kvm_create_device {
    uint32_t type;                  /* in: KVM_DEV_TYPE_* */
    uint32_t fd;                    /* out: device fd */
    uint32_t flags;
};

struct kvm_device_attr {
    uint32_t flags;
    uint32_t group;
    uint64_t attr;
    uint64_t addr;                  /* userspace address of the attribute's data */
};

/* Binary statistics (KVM_GET_STATS_FD): header at offset 0 of the stats fd */
struct kvm_stats_header {
    uint32_t flags;
    uint32_t name_size;
    uint32_t num_desc;
    uint32_t id_offset;
    uint32_t desc_offset;
    uint32_t data_offset;
};

/* Each descriptor is sizeof(struct kvm_stats_desc) + header.name_size bytes. */
struct kvm_stats_desc {
    uint32_t flags;                 /* KVM_STATS_TYPE/UNIT/BASE_* */
    int16_t exponent;
    uint16_t size;                  /* number of u64 values */
    uint32_t offset;                /* into the data block */
    uint32_t bucket_size;
    char name[];
};
