"""Placing kernel, initrd and DTB in guest RAM per the Linux arm64 boot protocol (booting.rst)."""

from __future__ import annotations

from dataclasses import dataclass

from pyvmm.arch.arm64 import layout
from pyvmm.arch.arm64.image import ArmImage
from pyvmm.errors import ImageError, UsageError


def _align_up(value: int, align: int) -> int:
    return (value + align - 1) & ~(align - 1)


@dataclass(frozen=True)
class Placement:
    kernel: int  # load address (= entry)
    kernel_end: int  # including the kernel's BSS (image_size)
    initrd: int | None
    dtb: int


def place(image: ArmImage, initrd_size: int | None, memory_base: int, memory_size: int) -> Placement:
    """Kernel low (2 MiB-aligned base + text_offset), DTB in the top 2 MiB, initrd just below the DTB."""
    ram_end = memory_base + memory_size
    kernel = memory_base + image.text_offset
    kernel_end = kernel + image.image_size
    dtb = ram_end - layout.DTB_MAX_SIZE
    if kernel_end > dtb:
        raise UsageError(
            f"the kernel needs {(kernel_end - memory_base) >> 20} MiB plus 2 MiB for the device tree, more than "
            f"--memory {memory_size >> 20}M: give the VM more memory"
        )
    initrd = None
    if initrd_size is not None:
        initrd = (dtb - initrd_size) & ~0xFFF
        # Leave the kernel room to relocate and grow: its image_size plus what it maps right after it.
        if initrd < _align_up(kernel_end, layout.KERNEL_ALIGN):
            raise ImageError(
                f"the initrd ({initrd_size >> 20} MiB) does not fit in guest memory next to the kernel: "
                f"give the VM more --memory (now {memory_size >> 20}M)"
            )
    return Placement(kernel, kernel_end, initrd, dtb)
