"""pyvmm's newc cpio writer and the `-- CMD` initramfs: checked against GNU cpio and by reading archives back."""

from __future__ import annotations

import gzip
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from pyvmm.errors import MissingFileError, UsageError
from pyvmm.initramfs import command as cmd
from pyvmm.initramfs.cpio import HEADER, HEADER_SIZE, Archive, parse
from tests.conftest import run_pyvmm

needs_cpio = pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio is not installed")
HOST_BUSYBOX = Path("/bin/busybox")


def sample() -> Archive:
    archive = Archive()
    archive.add_standard_devices()
    archive.add_file("etc/motd", b"hello\n", 0o644)
    archive.add_file("/bin/run.sh", b"#!/bin/sh\nexit 3\n", 0o755)
    archive.add_symlink("bin/sh", "busybox")
    archive.add_device("dev/vda", "b", 254, 0)
    archive.add_dir("mnt/empty", 0o700)
    return archive


def test_header_is_110_bytes_of_magic_and_hex():
    assert HEADER_SIZE == 110
    blob = HEADER.build(dict(ino=1, mode=0o100644, uid=0, gid=0, nlink=1, mtime=0, filesize=0x1234, devmajor=0,
                             devminor=0, rdevmajor=0, rdevminor=0, namesize=5, check=0))
    assert blob[:6] == b"070701" and b"00001234" in blob and len(blob) == 110


def test_entries_read_back_with_types_modes_and_parents_first():
    entries = {e.name: e for e in parse(sample().to_bytes())}
    names = list(entries)
    assert names.index("etc") < names.index("etc/motd") and names.index("mnt") < names.index("mnt/empty")
    assert entries["etc/motd"].data == b"hello\n" and entries["etc/motd"].mode == stat.S_IFREG | 0o644
    assert entries["bin/run.sh"].mode & 0o777 == 0o755
    assert stat.S_ISLNK(entries["bin/sh"].mode) and entries["bin/sh"].data == b"busybox"
    assert stat.S_ISCHR(entries["dev/console"].mode) and entries["dev/console"].rdev == (5, 1)
    assert stat.S_ISCHR(entries["dev/mem"].mode) and entries["dev/mem"].rdev == (1, 1)
    assert stat.S_ISBLK(entries["dev/vda"].mode) and entries["dev/vda"].rdev == (254, 0)
    assert entries["mnt/empty"].mode == stat.S_IFDIR | 0o700
    assert all(e.uid == 0 and e.gid == 0 for e in entries.values())


def test_every_entry_and_the_archive_are_4_byte_aligned_and_end_with_the_trailer():
    raw = sample().to_bytes()
    assert len(raw) % 4 == 0
    assert b"TRAILER!!!\0" in raw[-128:]


def test_output_is_reproducible_including_gzip():
    assert sample().to_gzip() == sample().to_gzip()
    assert gzip.decompress(sample().to_gzip()) == sample().to_bytes()
    assert sample().to_gzip()[4:8] == b"\0\0\0\0"  # gzip header mtime


@needs_cpio
def test_gnu_cpio_lists_and_extracts_the_archive(tmp_path):
    archive = tmp_path / "a.cpio"
    archive.write_bytes(sample().to_bytes())
    listing = subprocess.run(["cpio", "-itv", "--quiet"], stdin=archive.open("rb"), capture_output=True, timeout=30,
                             check=True).stdout.decode()
    assert "etc/motd" in listing and "bin/sh -> busybox" in listing
    assert "254,   0" in listing and "5,   1" in listing
    motd = subprocess.run(["cpio", "-i", "--quiet", "--to-stdout", "etc/motd"], stdin=archive.open("rb"),
                          capture_output=True, timeout=30, check=True).stdout
    assert motd == b"hello\n"


@pytest.mark.parametrize("path", ["", "/", ".", "a\0b"])
def test_bad_paths_are_refused(path):
    with pytest.raises(UsageError, match="bad path"):
        Archive().add_file(path, b"")


def test_dot_dot_cannot_escape_the_root():
    archive = Archive()
    archive.add_file("../../etc/x", b"")
    assert [e.name for e in parse(archive.to_bytes())] == ["etc", "etc/x"]


def test_duplicates_and_files_as_parents_are_refused():
    archive = Archive()
    archive.add_file("a", b"")
    with pytest.raises(UsageError, match="added twice"):
        archive.add_file("a", b"x")
    with pytest.raises(UsageError, match="not a directory"):
        archive.add_file("a/b", b"")
    with pytest.raises(UsageError, match="'c' or 'b'"):
        archive.add_device("dev/x", "p", 1, 1)


def test_parse_rejects_garbage():
    with pytest.raises(UsageError, match="not a newc"):
        parse(b"x" * 200)
    with pytest.raises(UsageError, match="truncated"):
        parse(sample().to_bytes()[:300])


@pytest.mark.parametrize("spec, expected", [("a:/b", (Path("a"), "/b")), ("c:d/e:/f", (Path("c:d/e"), "/f"))])
def test_add_specs_split_at_the_last_colon(spec, expected):
    assert cmd.parse_add(spec) == expected


@pytest.mark.parametrize("spec", ["nocolon", ":/x", "a:relative"])
def test_bad_add_specs(spec):
    with pytest.raises(UsageError, match="HOST:GUEST"):
        cmd.parse_add(spec)


def test_host_trees_keep_modes_and_symlinks(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.sh").write_text("echo x\n")
    (tmp_path / "d" / "x.sh").chmod(0o750)
    (tmp_path / "d" / "link").symlink_to("x.sh")
    archive = Archive()
    cmd.add_host_path(archive, tmp_path / "d", "/opt/d", cmd.AddBudget(1 << 20))
    entries = {e.name: e for e in parse(archive.to_bytes())}
    assert entries["opt/d/x.sh"].mode == stat.S_IFREG | 0o750 and entries["opt/d/x.sh"].data == b"echo x\n"
    assert entries["opt/d/link"].data == b"x.sh"
    with pytest.raises(MissingFileError):
        cmd.add_host_path(archive, tmp_path / "missing", "/m", cmd.AddBudget(1 << 20))


def test_added_files_beyond_what_the_guest_can_hold_are_refused_before_they_are_read(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a").write_bytes(b"a" * (600 << 10))
    (tmp_path / "d" / "b").write_bytes(b"b" * (600 << 10))
    budget = cmd.AddBudget(1 << 20)
    with pytest.raises(UsageError, match=r"--add .*/d/b: the added files would exceed 1 MiB.*\(-m\)"):
        cmd.add_host_path(Archive(), tmp_path / "d", "/d", budget)
    assert budget.used == 600 << 10  # the second file was refused from its size, unread


def test_elf_checks_on_busybox(tmp_path):
    fake = tmp_path / "bb"
    fake.write_bytes(b"#!/bin/sh\n")
    with pytest.raises(UsageError, match="not a 64-bit ELF"):
        cmd.check_busybox(fake, "arm64")
    dynamic = Path("/bin/ls")
    if cmd.elf_info(dynamic.read_bytes()) == (62, False):
        with pytest.raises(UsageError, match="dynamically linked"):
            cmd.check_busybox(dynamic, "x86_64")


@pytest.mark.skipif(cmd.elf_info(HOST_BUSYBOX.read_bytes() if HOST_BUSYBOX.exists() else b"") != (62, True),
                    reason="needs the host's static x86_64 busybox (busybox-static)")
class TestCommandImage:
    def build(self, command: list[str], arch: str = "x86_64") -> dict:
        spec = cmd.CommandSpec(command=command, busybox=HOST_BUSYBOX, exit_mmio=cmd.exit_mmio_for(arch))
        return {e.name: e for e in parse(cmd.build(spec, "x86_64").to_bytes())}

    def test_layout(self):
        entries = self.build(["true"])
        assert entries["init"].mode == stat.S_IFREG | 0o755
        assert entries["bin/busybox"].data == HOST_BUSYBOX.read_bytes()
        assert {"dev/console", "dev/mem", "dev/null", "pyvmm/command"} <= set(entries)

    def test_the_command_file_keeps_arguments_exactly(self, tmp_path):
        args = ["sh", "-c", "echo \"$0\" 'a b' $1; exit 7", "it's", "x  y"]
        script = tmp_path / "command"
        script.write_bytes(self.build(args)["pyvmm/command"].data)
        result = subprocess.run([str(HOST_BUSYBOX), "sh", str(script)], capture_output=True, timeout=30)
        assert result.returncode == 7
        assert result.stdout == b"it's a b x y\n"

    def test_arm64_init_reports_through_the_test_device_then_the_marker(self):
        script = cmd.init_script(cmd.exit_mmio_for("arm64"))
        assert "devmem 0x09010000 32 $status" in script
        assert script.index("devmem") < script.index(cmd.EXIT_MARKER) < script.index("poweroff -f")
        assert "devmem" not in self.build(["true"])["init"].data.decode()  # x86_64: console marker only

    def test_a_busybox_for_another_architecture_is_refused(self):
        spec = cmd.CommandSpec(command=["true"], busybox=HOST_BUSYBOX)
        with pytest.raises(UsageError, match="not an arm64 binary"):
            cmd.build(spec, "arm64")


@needs_cpio
def test_pyvmm_initramfs_command_writes_what_cpio_reads(tmp_path):
    (tmp_path / "hello.txt").write_text("hi\n")
    out = tmp_path / "out.cpio.gz"
    result = run_pyvmm("initramfs", "-o", str(out), "--add", f"{tmp_path / 'hello.txt'}:/etc/hello.txt",
                       "--symlink", "/lib:usr/lib", "--node", "/dev/vdb:b:254:16", "--dir", "/mnt", timeout=60)
    assert result.returncode == 0, result.stderr
    listing = subprocess.run(["cpio", "-it", "--quiet"], input=gzip.decompress(out.read_bytes()), capture_output=True,
                             timeout=30, check=True).stdout.decode().split()
    assert {"etc/hello.txt", "lib", "dev/vdb", "mnt", "dev/console"} <= set(listing)
    listed = run_pyvmm("initramfs", "--list", str(out), timeout=60)
    assert listed.returncode == 0 and b"lib -> usr/lib" in listed.stdout and b"dev/vdb (254, 16)" in listed.stdout


def test_pyvmm_initramfs_errors_are_one_line(tmp_path):
    result = run_pyvmm("initramfs", "-o", str(tmp_path / "x"), "--node", "/dev/x:c:a:1", timeout=60)
    assert result.returncode == 64 and b"MAJOR and MINOR must be numbers" in result.stderr
    result = run_pyvmm("initramfs", "-o", str(tmp_path / "x"), "--add", f"{tmp_path / 'nope'}:/nope", timeout=60)
    assert result.returncode == 66 and result.stderr.count(b"\n") == 1
    result = run_pyvmm("initramfs", timeout=60)
    assert result.returncode == 64 and b"--output" in result.stderr
