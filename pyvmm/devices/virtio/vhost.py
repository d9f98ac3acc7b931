"""/dev/vhost-vsock as a typed object: one method per vhost ioctl pyvmm uses, structs from pyvmm_bindings."""

from __future__ import annotations

import os

from pyvmm.kvm.ioctl import bindings, ffi, ioctl, new

VHOST_VSOCK_DEVICE = "/dev/vhost-vsock"


class VhostVsock:
    """An open vhost-vsock instance, owned by this process (VHOST_SET_OWNER). Raises OSError like os.open."""

    def __init__(self, path: str = VHOST_VSOCK_DEVICE) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        try:
            ioctl(self.fd, bindings.VHOST_SET_OWNER)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def get_features(self) -> int:
        holder = new("uint64_t *")
        ioctl(self.fd, bindings.VHOST_GET_FEATURES, holder)
        return int(holder[0])

    def set_features(self, features: int) -> None:
        ioctl(self.fd, bindings.VHOST_SET_FEATURES, new("uint64_t *", features))

    def set_guest_cid(self, cid: int) -> None:
        ioctl(self.fd, bindings.VHOST_VSOCK_SET_GUEST_CID, new("uint64_t *", cid))

    def set_running(self, running: bool) -> None:
        ioctl(self.fd, bindings.VHOST_VSOCK_SET_RUNNING, new("int *", int(running)))

    def set_mem_table(self, regions: list[tuple[int, int, int]]) -> None:
        """Guest RAM as vhost sees it: (guest_phys, size, host virtual address) per region."""
        # A cast does not own memory: `storage` keeps the allocation alive through the call.
        storage = ffi.new("char[]", ffi.sizeof("struct vhost_memory")
                          + len(regions) * ffi.sizeof("struct vhost_memory_region"))
        table = ffi.cast("struct vhost_memory *", storage)
        table.nregions = len(regions)
        for i, (guest_phys, size, host_address) in enumerate(regions):
            entry = table.regions[i]
            entry.guest_phys_addr = guest_phys
            entry.memory_size = size
            entry.userspace_addr = host_address
        ioctl(self.fd, bindings.VHOST_SET_MEM_TABLE, table)
        del storage

    def set_vring_num(self, index: int, size: int) -> None:
        ioctl(self.fd, bindings.VHOST_SET_VRING_NUM, new("struct vhost_vring_state *", (index, size)))

    def set_vring_base(self, index: int, next_avail: int) -> None:
        ioctl(self.fd, bindings.VHOST_SET_VRING_BASE, new("struct vhost_vring_state *", (index, next_avail)))

    def set_vring_addr(self, index: int, desc: int, used: int, avail: int) -> None:
        """Host virtual addresses of the three ring areas."""
        request = new("struct vhost_vring_addr *")
        request.index = index
        request.desc_user_addr = desc
        request.used_user_addr = used
        request.avail_user_addr = avail
        ioctl(self.fd, bindings.VHOST_SET_VRING_ADDR, request)

    def set_vring_kick(self, index: int, eventfd: int) -> None:
        ioctl(self.fd, bindings.VHOST_SET_VRING_KICK, new("struct vhost_vring_file *", (index, eventfd)))

    def set_vring_call(self, index: int, eventfd: int) -> None:
        ioctl(self.fd, bindings.VHOST_SET_VRING_CALL, new("struct vhost_vring_file *", (index, eventfd)))
