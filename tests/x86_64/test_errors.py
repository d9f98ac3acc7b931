"""Bad input gets one clear line on stderr and a distinct exit status, never a traceback."""

from __future__ import annotations

import pytest

from tests.conftest import run_pyvmm


def assert_one_line_error(result, status: int, *needles: str) -> str:
    err = result.stderr.decode()
    assert result.returncode == status, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pyvmm: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_missing_kernel_file(tmp_path):
    result = run_pyvmm("run", "--no-stdin", "-k", str(tmp_path / "nope.bin"))
    assert_one_line_error(result, 66, "does not exist")


def test_empty_kernel_file(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    assert_one_line_error(run_pyvmm("run", "--no-stdin", "-k", str(tmp_path / "empty")), 65, "empty")


@pytest.mark.parametrize("blob, needle", [
    (b"\x7fELF\x02\x01\x01" + bytes(11) + b"\x3e\x00" + bytes(100), "x86_64 ELF"),
    (bytes(0x202) + b"HdrS" + bytes(100), "bzImage"),
    (bytes(56) + b"ARM\x64" + bytes(100), "arm64 Linux Image"),
    (b"\x1f\x8b\x08" + bytes(50), "gzip"),
])
def test_recognisably_foreign_images_are_refused(tmp_path, blob, needle):
    path = tmp_path / "image"
    path.write_bytes(blob)
    assert_one_line_error(run_pyvmm("run", "--no-stdin", "-k", str(path)), 65, needle)


def test_payload_too_large_for_real_mode(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(b"\x90" * 0x100000)
    assert_one_line_error(run_pyvmm("run", "--no-stdin", "-k", str(path)), 65, "must fit")


@pytest.mark.parametrize("args, needle", [
    (["--cpus", "0"], "at least 1"),
    (["--cpus", "100000"], "absurd"),
    (["--memory", "100T"], "more than this host has"),
    (["--memory", "1M"], "too small"),
])
def test_impossible_resources(args, needle):
    assert_one_line_error(run_pyvmm("run", "--no-stdin", *args), 64, needle)


def test_unparsable_memory_size_is_a_usage_error():
    result = run_pyvmm("run", "--no-stdin", "--memory", "lots")
    assert result.returncode == 64
    assert b"cannot parse memory size" in result.stderr
    assert b"Traceback" not in result.stderr


def test_missing_kvm_device(tmp_path):
    result = run_pyvmm("run", "--no-stdin", env={"PYVMM_KVM_DEVICE": str(tmp_path / "kvm")})
    assert_one_line_error(result, 69, "does not exist")


def test_a_device_that_is_not_kvm(tmp_path):
    result = run_pyvmm("run", "--no-stdin", env={"PYVMM_KVM_DEVICE": "/dev/null"})
    assert_one_line_error(result, 69, "not a KVM device")


def test_debug_shows_the_traceback(tmp_path):
    result = run_pyvmm("run", "--no-stdin", "--debug", "-k", str(tmp_path / "nope.bin"))
    assert result.returncode == 66
    assert b"Traceback" in result.stderr


def test_every_command_documents_its_options():
    for command in (["--help"], ["run", "--help"], ["probe", "--help"]):
        result = run_pyvmm(*command)
        assert result.returncode == 0
        text = result.stdout.decode()
        assert "Usage:" in text
    run_help = run_pyvmm("run", "--help").stdout.decode()
    for option in ("--kernel", "--memory", "--cpus", "--initrd", "--guest-arg", "--on-reboot", "--dump-dtb"):
        assert option in run_help
    assert "default: 256M" in run_help and "MiB" in run_help
