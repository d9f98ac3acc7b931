"""Register values a device publishes for the guest to read without exiting (see pyvmm.kvm.readonly).

The device decides when its reads may be served from memory (`RegisterMirror.show(image)` with what each register
reads as) and when they must exit again (`hide()`); `PageMirror` puts the image on a read-only page that covers the
device's registers and nothing else. KVM's read-only slots exist on arm64 (and x86_64 for MMIO): a port I/O device
has no mirror.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pyvmm.kvm.readonly import ReadOnlyPage


class RegisterMirror(Protocol):
    def show(self, image: bytes) -> None: ...  # the registers read as `image` (offset 0 first), without exiting

    def hide(self) -> None: ...  # once this returns, every read exits to the device


class MirroredDevice(Protocol):
    name: str
    read_exits: int  # how many register reads still exited (--debug)

    def mirror_reads(self, mirror: RegisterMirror | None) -> bool:
        """True while the device keeps `mirror` current (False: KVM refused an update, reads exit)."""


class PageMirror:
    """A RegisterMirror on a read-only page whose first byte is the device's register 0."""

    def __init__(self, page: ReadOnlyPage) -> None:
        self.page = page

    def show(self, image: bytes) -> None:
        self.page.buffer[:len(image)] = image  # single-byte registers: a concurrent guest read sees old or new
        self.page.show()

    def hide(self) -> None:
        self.page.hide()

    def close(self) -> None:
        self.page.close()
