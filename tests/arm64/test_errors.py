"""arm64 input errors: one clear line before any vCPU runs."""

from __future__ import annotations

import struct

import pytest

from tests.conftest import run_pyvmm


def one_line_error(result, status: int, needle: str) -> None:
    err = result.stderr.decode()
    assert result.returncode == status, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert needle in err, err


@pytest.mark.parametrize("header, needle", [
    (b"\x7fELF\x02\x01\x01" + bytes(11) + struct.pack("<H", 183), "arm64 ELF file"),
    (b"MZ" + bytes(62), "PE/EFI executable"),
    (b"\x1f\x8b\x08" + bytes(7), "gzip-compressed but corrupt"),
])
def test_a_file_of_another_kind_is_refused_not_run_as_a_raw_binary(tmp_path, header, needle):
    # Without the Image magic a file is loaded as a raw binary (kvm-unit-tests' .flat), unless it is recognisably
    # something else: those keep their one-line refusal.
    path = tmp_path / "Image"
    path.write_bytes(header + bytes(4096))
    one_line_error(run_pyvmm("run", "--no-stdin", "-k", str(path)), 65, needle)


def test_truncated_linux_image(tmp_path, l2_kernel):
    path = tmp_path / "Image"
    path.write_bytes(l2_kernel.read_bytes()[: 1 << 20])
    one_line_error(run_pyvmm("run", "--no-stdin", "-k", str(path)), 65, "truncated")


def test_initrd_that_does_not_fit(tmp_path, l2_kernel):
    initrd = tmp_path / "big.initrd"
    initrd.write_bytes(bytes(40 << 20))
    one_line_error(run_pyvmm("run", "--no-stdin", "-k", str(l2_kernel), "-i", str(initrd), "-m", "48M"), 65,
                   "initrd")


def test_memory_too_small_for_the_kernel(l2_kernel):
    one_line_error(run_pyvmm("run", "--no-stdin", "-k", str(l2_kernel), "-m", "16M"), 64, "more memory")


def test_more_cpus_than_the_host_allows():
    # Whichever limit comes first here (KVM_CAP_MAX_VCPUS or the GICv3 redistributor window), it is named.
    one_line_error(run_pyvmm("run", "--no-stdin", "--cpus", "500"), 64, "--cpus 500")


def test_irqchip_the_host_lacks_or_has():
    result = run_pyvmm("run", "--no-stdin", "--irqchip", "gicv2", timeout=120)
    if result.returncode != 0:  # a GICv3 host without v2 compatibility: a clear refusal
        one_line_error(result, 69, "GICv2")


@pytest.mark.parametrize("text_offset, image_size, needle", [
    (1 << 40, 4096, "text_offset"),
    (0, 0x7FFF_FFFF_FFFF_F000, "image_size"),
])
def test_an_absurd_image_header_is_a_corrupt_image(tmp_path, text_offset, image_size, needle):
    path = tmp_path / "Image"
    path.write_bytes(struct.pack("<IIQQQQQQ4s4s", 0x14000010, 0, text_offset, image_size, 2, 0, 0, 0, b"ARM\x64",
                                 bytes(4)) + bytes(4032))
    one_line_error(run_pyvmm("run", "--no-stdin", "-k", str(path)), 65, needle)
