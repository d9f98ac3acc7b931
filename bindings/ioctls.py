"""ioctl request tables: (direction, number, argument type) per ioctl name, one table per ioctl type (magic).

The request numbers are computed from these tables in `pyvmm_bindings.load()` with
ioctl_opt.IOC and the size cffi gives for the argument type, exactly as the
kernel's _IO/_IOR/_IOW/_IOWR macros do, so a struct declaration that drifts
changes the number too (tests/unit/test_bindings_layout.py compares both with
<linux/kvm.h>, <linux/vhost.h> and <linux/if_tun.h>). x86_64 and arm64 use the
generic _IOC encoding, which is what ioctl_opt implements.
"""

from ioctl_opt import IOC_NONE, IOC_READ, IOC_WRITE

KVMIO = 0xAE
VHOST_VIRTIO = 0xAF
TUN_MAGIC = ord("T")

_RW = IOC_READ | IOC_WRITE

# name -> (direction, nr, cffi type of the argument or None for _IO)
IoctlSpec = tuple[int, int, str | None]

COMMON: dict[str, IoctlSpec] = {
    # /dev/kvm
    "KVM_GET_API_VERSION": (IOC_NONE, 0x00, None),
    "KVM_CREATE_VM": (IOC_NONE, 0x01, None),
    "KVM_CHECK_EXTENSION": (IOC_NONE, 0x03, None),
    "KVM_GET_VCPU_MMAP_SIZE": (IOC_NONE, 0x04, None),
    # VM
    "KVM_CREATE_VCPU": (IOC_NONE, 0x41, None),
    "KVM_SET_USER_MEMORY_REGION": (IOC_WRITE, 0x46, "struct kvm_userspace_memory_region"),
    "KVM_IRQ_LINE": (IOC_WRITE, 0x61, "struct kvm_irq_level"),
    "KVM_REGISTER_COALESCED_MMIO": (IOC_WRITE, 0x67, "struct kvm_coalesced_mmio_zone"),
    "KVM_UNREGISTER_COALESCED_MMIO": (IOC_WRITE, 0x68, "struct kvm_coalesced_mmio_zone"),
    "KVM_SET_GSI_ROUTING": (IOC_WRITE, 0x6A, "struct kvm_irq_routing"),
    "KVM_IRQFD": (IOC_WRITE, 0x76, "struct kvm_irqfd"),
    "KVM_IOEVENTFD": (IOC_WRITE, 0x79, "struct kvm_ioeventfd"),
    "KVM_ENABLE_CAP": (IOC_WRITE, 0xA3, "struct kvm_enable_cap"),
    "KVM_CREATE_DEVICE": (_RW, 0xE0, "struct kvm_create_device"),
    "KVM_SET_DEVICE_ATTR": (IOC_WRITE, 0xE1, "struct kvm_device_attr"),
    "KVM_GET_DEVICE_ATTR": (IOC_WRITE, 0xE2, "struct kvm_device_attr"),
    "KVM_HAS_DEVICE_ATTR": (IOC_WRITE, 0xE3, "struct kvm_device_attr"),
    "KVM_GET_STATS_FD": (IOC_NONE, 0xCE, None),
    # vCPU
    "KVM_RUN": (IOC_NONE, 0x80, None),
    "KVM_GET_REGS": (IOC_READ, 0x81, "struct kvm_regs"),
    "KVM_SET_REGS": (IOC_WRITE, 0x82, "struct kvm_regs"),
    "KVM_SET_SIGNAL_MASK": (IOC_WRITE, 0x8B, "struct kvm_signal_mask"),
    "KVM_GET_MP_STATE": (IOC_READ, 0x98, "struct kvm_mp_state"),
    "KVM_SET_MP_STATE": (IOC_WRITE, 0x99, "struct kvm_mp_state"),
    # _IOW although both read the register: the kernel's (historical) encoding.
    "KVM_GET_ONE_REG": (IOC_WRITE, 0xAB, "struct kvm_one_reg"),
    "KVM_SET_ONE_REG": (IOC_WRITE, 0xAC, "struct kvm_one_reg"),
}

X86_64: dict[str, IoctlSpec] = {
    "KVM_GET_SUPPORTED_CPUID": (_RW, 0x05, "struct kvm_cpuid2"),
    "KVM_SET_TSS_ADDR": (IOC_NONE, 0x47, None),
    "KVM_SET_IDENTITY_MAP_ADDR": (IOC_WRITE, 0x48, "uint64_t"),
    "KVM_CREATE_IRQCHIP": (IOC_NONE, 0x60, None),
    "KVM_CREATE_PIT2": (IOC_WRITE, 0x77, "struct kvm_pit_config"),
    "KVM_GET_SREGS": (IOC_READ, 0x83, "struct kvm_sregs"),
    "KVM_SET_SREGS": (IOC_WRITE, 0x84, "struct kvm_sregs"),
    "KVM_GET_MSRS": (_RW, 0x88, "struct kvm_msrs"),
    "KVM_SET_MSRS": (IOC_WRITE, 0x89, "struct kvm_msrs"),
    "KVM_GET_FPU": (IOC_READ, 0x8C, "struct kvm_fpu"),
    "KVM_SET_FPU": (IOC_WRITE, 0x8D, "struct kvm_fpu"),
    "KVM_GET_LAPIC": (IOC_READ, 0x8E, "struct kvm_lapic_state"),
    "KVM_SET_LAPIC": (IOC_WRITE, 0x8F, "struct kvm_lapic_state"),
    "KVM_SET_CPUID2": (IOC_WRITE, 0x90, "struct kvm_cpuid2"),
    "KVM_GET_VCPU_EVENTS": (IOC_READ, 0x9F, "struct kvm_vcpu_events"),
    "KVM_SET_VCPU_EVENTS": (IOC_WRITE, 0xA0, "struct kvm_vcpu_events"),
}

ARM64: dict[str, IoctlSpec] = {
    "KVM_ARM_VCPU_INIT": (IOC_WRITE, 0xAE, "struct kvm_vcpu_init"),
    "KVM_ARM_PREFERRED_TARGET": (IOC_READ, 0xAF, "struct kvm_vcpu_init"),
    "KVM_GET_REG_LIST": (_RW, 0xB0, "struct kvm_reg_list"),
    "KVM_ARM_VCPU_FINALIZE": (IOC_WRITE, 0xC2, "int"),
}

# /dev/vhost-vsock (<linux/vhost.h>)
VHOST: dict[str, IoctlSpec] = {
    "VHOST_GET_FEATURES": (IOC_READ, 0x00, "uint64_t"),
    "VHOST_SET_FEATURES": (IOC_WRITE, 0x00, "uint64_t"),
    "VHOST_SET_OWNER": (IOC_NONE, 0x01, None),
    "VHOST_SET_MEM_TABLE": (IOC_WRITE, 0x03, "struct vhost_memory"),
    "VHOST_SET_VRING_NUM": (IOC_WRITE, 0x10, "struct vhost_vring_state"),
    "VHOST_SET_VRING_ADDR": (IOC_WRITE, 0x11, "struct vhost_vring_addr"),
    "VHOST_SET_VRING_BASE": (IOC_WRITE, 0x12, "struct vhost_vring_state"),
    "VHOST_SET_VRING_KICK": (IOC_WRITE, 0x20, "struct vhost_vring_file"),
    "VHOST_SET_VRING_CALL": (IOC_WRITE, 0x21, "struct vhost_vring_file"),
    "VHOST_VSOCK_SET_GUEST_CID": (IOC_WRITE, 0x60, "uint64_t"),
    "VHOST_VSOCK_SET_RUNNING": (IOC_WRITE, 0x61, "int"),
}

# /dev/net/tun (<linux/if_tun.h>). TUNSETIFF is declared with an int argument although it takes a struct ifreq.
TUN: dict[str, IoctlSpec] = {
    "TUNSETIFF": (IOC_WRITE, 202, "int"),
    "TUNSETPERSIST": (IOC_WRITE, 203, "int"),
    "TUNSETOFFLOAD": (IOC_WRITE, 208, "unsigned int"),
    "TUNSETVNETHDRSZ": (IOC_WRITE, 216, "int"),
}

# (ioctl type, table) per arch
BY_ARCH: dict[str, list[tuple[int, dict[str, IoctlSpec]]]] = {
    "x86_64": [(KVMIO, COMMON | X86_64), (VHOST_VIRTIO, VHOST), (TUN_MAGIC, TUN)],
    "arm64": [(KVMIO, COMMON | ARM64), (VHOST_VIRTIO, VHOST), (TUN_MAGIC, TUN)],
}
