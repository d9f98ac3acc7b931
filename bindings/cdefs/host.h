/* Host interfaces pyvmm uses besides KVM: vhost (<linux/vhost_types.h>), TUN/TAP (<linux/if.h>, <linux/if_tun.h>),
 * the virtio-net header a vnet-header TAP exchanges (<linux/virtio_net.h>) and libc's fallocate. Read after
 * common.h; the same fixed-width rule holds, and tests/unit/test_bindings_layout.py checks these layouts too. */

/* fallocate(2) with a mode (FALLOC_FL_*), which os.posix_fallocate cannot pass. off_t is 64-bit on both arches. */
int fallocate(int fd, int mode, int64_t offset, int64_t len);

/* -- vhost -------------------------------------------------------------------------------------------------- */
struct vhost_vring_state {
    uint32_t index;
    uint32_t num;
};

struct vhost_vring_file {
    uint32_t index;
    int32_t fd;                     /* -1 unbinds */
};

struct vhost_vring_addr {
    uint32_t index;
    uint32_t flags;                 /* VHOST_VRING_F_LOG */
    uint64_t desc_user_addr;        /* host virtual addresses of the ring areas */
    uint64_t used_user_addr;
    uint64_t avail_user_addr;
    uint64_t log_guest_addr;
};

struct vhost_memory_region {
    uint64_t guest_phys_addr;
    uint64_t memory_size;
    uint64_t userspace_addr;
    uint64_t flags_padding;
};

struct vhost_memory {
    uint32_t nregions;
    uint32_t padding;
    struct vhost_memory_region regions[];
};

/* -- TUN/TAP ------------------------------------------------------------------------------------------------ */
struct ifmap {
    uint64_t mem_start;             /* unsigned long: 64-bit on both arches */
    uint64_t mem_end;
    uint16_t base_addr;
    uint8_t irq;
    uint8_t dma;
    uint8_t port;
};

/* The members of ifr_ifru pyvmm needs, plus ifru_map, which gives the union its size and alignment. */
struct ifreq {
    char ifr_name[16];              /* IFNAMSIZ */
    union {
        int16_t ifru_flags;
        int32_t ifru_ivalue;
        struct ifmap ifru_map;
    } ifr_ifru;
};

/* What precedes every frame on a TAP with IFF_VNET_HDR and TUNSETVNETHDRSZ 12 (the VERSION_1 layout). */
struct virtio_net_hdr_v1 {
    uint8_t flags;
    uint8_t gso_type;
    uint16_t hdr_len;
    uint16_t gso_size;
    uint16_t csum_start;
    uint16_t csum_offset;
    uint16_t num_buffers;
};
