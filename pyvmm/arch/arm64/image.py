"""The arm64 Linux Image format (Documentation/arch/arm64/booting.rst), parsed with construct, and raw binaries.

A file without the Image magic that is not recognisably another format is a raw binary (kvm-unit-tests' .flat
files, bare-metal payloads): loaded at RAM base + 0x80000 like QEMU's `virt` does, and entered like an Image.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass

from construct import Bytes, Const, Int32ul, Int64ul, Struct

from pyvmm.arch.arm64 import layout
from pyvmm.arch.machine import describe_foreign_image
from pyvmm.errors import ImageError

ImageHeader = Struct(
    "code0" / Int32ul,
    "code1" / Int32ul,
    "text_offset" / Int64ul,
    "image_size" / Int64ul,  # effective size incl. BSS; 0 on kernels before 3.17
    "flags" / Int64ul,
    "res2" / Int64ul,
    "res3" / Int64ul,
    "res4" / Int64ul,
    "magic" / Const(b"ARM\x64"),
    "res5" / Bytes(4),
)
HEADER_SIZE = 64
LEGACY_TEXT_OFFSET = 0x80000
RAW_BINARY_OFFSET = 0x80000  # QEMU's `virt` loads a non-Image kernel file here; kvm-unit-tests builds expect it
FLAG_BIG_ENDIAN = 1 << 0
MAX_DECOMPRESSED = 512 << 20


@dataclass(frozen=True)
class ArmImage:
    data: bytes
    text_offset: int
    image_size: int  # bytes the kernel occupies from its load address (>= len(data))
    raw: bool = False  # a raw binary, not a Linux Image: it gets exactly the command line the user gave


def _gunzip(data: bytes, path: str) -> bytes:
    try:
        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out = decompressor.decompress(data, MAX_DECOMPRESSED)
        if decompressor.unconsumed_tail:
            raise ImageError(f"{path} decompresses to more than {MAX_DECOMPRESSED >> 20} MiB")
        if not decompressor.eof:
            raise ImageError(f"{path} is gzip-compressed but corrupt or truncated (the stream does not end)")
        return out
    except (zlib.error, EOFError, gzip.BadGzipFile) as err:
        raise ImageError(f"{path} is gzip-compressed but corrupt ({err})") from None


def parse(data: bytes, path: str) -> ArmImage:
    if not data:
        raise ImageError(f"{path} is empty")
    if data[:2] == b"\x1f\x8b":
        data = _gunzip(data, path)
    if len(data) >= 60 and data[56:60] == b"ARM\x64":
        if len(data) < HEADER_SIZE:
            raise ImageError(f"{path} is a truncated arm64 Image (shorter than its 64-byte header)")
        header = ImageHeader.parse(data[:HEADER_SIZE])
        if header.flags & FLAG_BIG_ENDIAN:
            raise ImageError(f"{path} is a big-endian arm64 kernel; pyvmm runs little-endian guests")
        text_offset = header.text_offset
        image_size = header.image_size
        if image_size == 0:  # pre-3.17 kernels
            text_offset = LEGACY_TEXT_OFFSET
            image_size = len(data)
        elif image_size < len(data):
            raise ImageError(
                f"{path}: the Image header says {image_size} bytes but the file holds {len(data)}: not a valid Image"
            )
        raw_end = pe_raw_end(data)
        if raw_end is not None and raw_end > len(data):
            raise ImageError(
                f"{path} is a truncated arm64 Image: {len(data)} bytes where its sections need {raw_end}; "
                f"copy or download it again"
            )
        if text_offset % 4096:
            raise ImageError(f"{path}: text_offset {text_offset:#x} is not page aligned: a corrupt Image header")
        # The kernel sits text_offset into a 2 MiB-aligned block (booting.rst), and no kernel occupies more than
        # what a decompressed Image may hold: beyond either the header is corrupt, not the VM too small.
        if text_offset >= layout.KERNEL_ALIGN:
            raise ImageError(f"{path}: text_offset {text_offset:#x} is not below 2 MiB: a corrupt Image header")
        if image_size > MAX_DECOMPRESSED:
            raise ImageError(f"{path}: image_size {image_size:#x} is over {MAX_DECOMPRESSED >> 20} MiB: a corrupt "
                             f"Image header")
        return ArmImage(data, text_offset, image_size)
    foreign = describe_foreign_image(data) or _describe_text(data)
    if foreign is not None:
        raise ImageError(f"{path} is {foreign}, not an arm64 Image nor a raw binary")
    return ArmImage(data, RAW_BINARY_OFFSET, len(data), raw=True)


def _describe_text(data: bytes) -> str | None:
    """A script, config or environ file named as the kernel by mistake: code always holds bytes outside text."""
    if data[:6] in (b"070701", b"070702"):
        return "a cpio archive (an initramfs? pass it with --initrd)"
    head = data[:512]
    if all(byte in b"\t\n\r" or 0x20 <= byte < 0x7F for byte in head):
        return "a text file"
    return None


def pe_raw_end(data: bytes) -> int | None:
    """End of the last PE section's file data, for Images with an EFI stub ("MZ" + PE header); None otherwise.

    Images built with the EFI stub (all distribution kernels) describe their own file layout in the PE section
    table, which tells a truncated file from a complete one; image_size alone cannot (it includes the BSS).
    """
    if data[:2] != b"MZ" or len(data) < 0x40:
        return None
    pe = int.from_bytes(data[0x3C:0x40], "little")
    if pe + 24 > len(data) or data[pe : pe + 4] != b"PE\0\0":
        return None
    sections = int.from_bytes(data[pe + 6 : pe + 8], "little")
    table = pe + 24 + int.from_bytes(data[pe + 20 : pe + 22], "little")
    end = 0
    for i in range(sections):
        entry = table + 40 * i
        if entry + 40 > len(data):
            return len(data) + 1  # the section table itself is cut off
        size = int.from_bytes(data[entry + 16 : entry + 20], "little")
        pointer = int.from_bytes(data[entry + 20 : entry + 24], "little")
        end = max(end, pointer + size)
    return end
