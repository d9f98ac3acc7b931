"""A TAP device for virtio-net, as a typed object: TUNSETIFF, TUNSETVNETHDRSZ and TUNSETOFFLOAD through
pyvmm_bindings (struct ifreq and the numbers from <linux/if_tun.h>)."""

from __future__ import annotations

import errno
import os

from pyvmm.errors import HostResourceError, KvmPermissionError
from pyvmm.kvm.ioctl import bindings, ffi, ioctl, new
from pyvmm_bindings import constants as c

TUN_DEVICE = "/dev/net/tun"
VNET_HDR_SIZE = ffi.sizeof("struct virtio_net_hdr_v1")
NUM_BUFFERS_OFFSET = ffi.offsetof("struct virtio_net_hdr_v1", "num_buffers")


class Tap:
    """TAP device `name` (created if absent) with IFF_NO_PI and a virtio_net_hdr_v1 before every frame; its fd is
    non-blocking. One-line errors for what users hit."""

    def __init__(self, name: str) -> None:
        try:
            self.fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise HostResourceError(f"--net: {TUN_DEVICE} does not exist (load the tun module: modprobe tun)") \
                from None
        except PermissionError:
            raise KvmPermissionError(f"--net: {TUN_DEVICE} cannot be opened: permission denied") from None
        try:
            request = new("struct ifreq *")
            request.ifr_name = name.encode()
            request.ifr_ifru.ifru_flags = c.IFF_TAP | c.IFF_NO_PI | c.IFF_VNET_HDR
            ioctl(self.fd, bindings.TUNSETIFF, request)
            ioctl(self.fd, bindings.TUNSETVNETHDRSZ, new("int *", VNET_HDR_SIZE))
        except OSError as err:
            self.close()
            raise _tap_error(name, err) from None

    def set_offload(self, flags: int) -> None:
        """TUNSETOFFLOAD: which TUN_F_* offloads frames written to the guest may carry (passed by value)."""
        ioctl(self.fd, bindings.TUNSETOFFLOAD, flags)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _tap_error(name: str, err: OSError) -> HostResourceError | KvmPermissionError:
    if err.errno == errno.EPERM:
        return KvmPermissionError(
            f"--net tap={name}: creating or attaching a TAP device needs CAP_NET_ADMIN (run as root, or create "
            f"it for your user first: ip tuntap add {name} mode tap vnet_hdr user $USER)")
    if err.errno == errno.EBUSY:
        return HostResourceError(f"--net tap={name} is in use by another process")
    if err.errno == errno.EINVAL:
        return HostResourceError(f"--net tap={name}: the device exists but is not a TAP with a vnet header "
                                 f"(a TUN or a multi-queue TAP?)")
    return HostResourceError(f"--net tap={name}: {err.strerror}")
