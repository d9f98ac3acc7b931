"""The bundled guests: the committed binaries are what the sources build to, and they have the right format."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

import pyvmm_guests

SOURCE_DIR = Path(__file__).resolve().parents[2] / "guest-kernels"
TOOLS = {
    "x86_64": ("as", "ld", "objcopy"),
    "arm64": ("aarch64-linux-gnu-as", "aarch64-linux-gnu-ld", "aarch64-linux-gnu-objcopy"),
}
ALL_GUESTS = [(arch, name) for arch in pyvmm_guests.ARCHES for name in pyvmm_guests.names(arch)]
ARM64_MAGIC = b"ARM\x64"
# x86_64 payloads are loaded at 0x10000 and must end below the 0xA0000 hole.
X86_MAX_SIZE = 0xA0000 - 0x10000


def _missing_tools() -> list[str]:
    return [tool for tools in TOOLS.values() for tool in ("make", *tools) if shutil.which(tool) is None]


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh build of every guest from the sources, in a temporary directory."""
    missing = _missing_tools()
    if missing:
        reason = f"cannot rebuild the guests, missing: {', '.join(sorted(set(missing)))}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("guests")
    subprocess.run(
        ["make", "-C", str(SOURCE_DIR), "--no-print-directory", f"O={out}", "all"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


@pytest.mark.parametrize(("arch", "name"), ALL_GUESTS)
def test_committed_binary_matches_a_rebuild(rebuilt: Path, arch: str, name: str) -> None:
    # The checkout's file, whichever way pyvmm is installed (editable, or a copy in site-packages).
    relative = pyvmm_guests.path(arch, name).relative_to(pyvmm_guests.path(arch, name).parents[1])
    committed = SOURCE_DIR / relative
    assert (rebuilt / relative).read_bytes() == committed.read_bytes(), f"{committed} is stale: run make -C guest-kernels"


@pytest.mark.parametrize(("arch", "name"), ALL_GUESTS)
def test_installed_binary_is_the_checkout_s(arch: str, name: str) -> None:
    installed = pyvmm_guests.path(arch, name)
    committed = SOURCE_DIR / installed.relative_to(installed.parents[1])
    assert installed.read_bytes() == committed.read_bytes(), f"{installed} differs from {committed}: reinstall pyvmm"


def test_rebuild_is_reproducible(rebuilt: Path, tmp_path: Path) -> None:
    subprocess.run(
        ["make", "-C", str(SOURCE_DIR), "--no-print-directory", f"O={tmp_path}", "all"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    for arch, name in ALL_GUESTS:
        relative = pyvmm_guests.path(arch, name).relative_to(pyvmm_guests.path(arch, name).parents[1])
        assert (tmp_path / relative).read_bytes() == (rebuilt / relative).read_bytes(), relative


@pytest.mark.parametrize("name", pyvmm_guests.names("arm64"))
def test_arm64_image_header(name: str) -> None:
    image = pyvmm_guests.path("arm64", name).read_bytes()
    code0, code1, text_offset, image_size, flags = struct.unpack_from("<IIQQQ", image, 0)
    assert image[56:60] == ARM64_MAGIC
    assert code0 >> 26 == 0b000101, "code0 must be a B (branch) to the entry point"
    assert text_offset == 0
    # The guests have no bss, and the linker pads the file to 16 bytes: image_size is exactly the file size.
    assert image_size == len(image)
    assert len(image) % 16 == 0
    assert flags == 0b010, "flags: little endian, 4 KiB pages, 2 MiB-aligned base anywhere"


@pytest.mark.parametrize("name", pyvmm_guests.names("x86_64"))
def test_x86_64_binary_fits_below_the_vga_hole(name: str) -> None:
    size = pyvmm_guests.path("x86_64", name).stat().st_size
    assert 0 < size <= X86_MAX_SIZE


@pytest.mark.parametrize("arch", pyvmm_guests.ARCHES)
def test_guests_print_the_contracted_greeting(arch: str) -> None:
    greeting = f"Hello from the pyvmm {arch} guest\n".encode() + b"\0"
    assert greeting in pyvmm_guests.path(arch, "hello").read_bytes()


def test_names_and_paths() -> None:
    assert pyvmm_guests.ARCHES == ("x86_64", "arm64")
    for arch in pyvmm_guests.ARCHES:
        assert pyvmm_guests.names(arch) == ("hello", "exits", "idle", "hostile")
    assert pyvmm_guests.path("x86_64", "idle").name == "idle.bin"
    assert pyvmm_guests.path("arm64", "idle").name == "idle.Image"
    assert pyvmm_guests.path("arm64", "hello").is_absolute()


def test_bad_names_are_refused_with_one_line_errors() -> None:
    with pytest.raises(ValueError, match="unknown guest architecture 'riscv64'"):
        pyvmm_guests.names("riscv64")
    with pytest.raises(ValueError, match="unknown guest architecture 'aarch64'"):
        pyvmm_guests.path("aarch64", "hello")
    with pytest.raises(ValueError, match="unknown arm64 guest 'nope'"):
        pyvmm_guests.path("arm64", "nope")
