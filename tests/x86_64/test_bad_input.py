"""Careless input that used to hang, crash or lie: each is now one line with the README's status, at once, and
leaves no output file behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import pyvmm_guests

from tests.conftest import run_pyvmm
from tests.x86_64.test_errors import assert_one_line_error

HELLO = str(pyvmm_guests.path("x86_64", "hello"))


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    os.link(disk, tmp_path / "link.img")
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(64 << 20)
    return {"FIFO": str(fifo), "DISK": str(disk), "LINK": str(tmp_path / "link.img"), "DIR": str(tmp_path),
            "BIG": str(big), "LONG": str(tmp_path / ("s" * 120)), "NEW": str(tmp_path / "new.out")}


@pytest.mark.parametrize("args, status, needle", [
    (["-k", HELLO, "--cpus", "256"], 64, "at most 255 vCPUs"),
    (["-k", HELLO, "--cpus", "512"], 64, "at most 255 vCPUs"),
    (["-k", "/dev/zero"], 66, "is a character device, not a regular file"),
    (["-k", "{FIFO}"], 66, "is a FIFO"),
    (["-k", "{DIR}"], 66, "is a directory"),
    (["-k", "{BIG}", "-m", "32M"], 64, "more than the VM's memory can hold"),
    (["-k", HELLO, "--initrd", "{DIR}/missing"], 66, "does not exist"),
    (["-k", HELLO, "--console-log", "{FIFO}"], 66, "--console-log"),
    (["-k", HELLO, "--stats-json", "{FIFO}"], 66, "--stats-json"),
    (["-k", HELLO, "--stats-json", "{DIR}"], 66, "is a directory"),
    (["-k", HELLO, "--console-log", "{DIR}/no/dir/console.log"], 66, "does not exist"),
    (["-k", HELLO, "--cpu-affinity", "0=0-100000000"], 64, "beyond any host"),
    (["-k", HELLO, "--api-socket", "{LONG}"], 64, "over the 107"),
    (["-k", HELLO, "--timeout", "inf"], 64, "--timeout"),
    (["-k", HELLO, "--timeout", "1e308"], 64, "--timeout"),
    (["-k", HELLO, "--timeout", "nan"], 64, "--timeout"),
    (["-k", HELLO, "--disk", "{FIFO},ro"], 66, "neither a regular file nor a block device"),
    (["-k", HELLO, "--disk", "{DIR}"], 66, "neither a regular file nor a block device"),
    (["-k", HELLO, "--disk", "{DISK}", "--disk", "{LINK}"], 64, "is given twice (also as"),
])
def test_bad_input_is_one_line_at_once(files, args, status, needle):
    args = [a.format(**files) for a in args]
    # An output file of the run's own that must not appear when the run is refused.
    output = "--stats-json" if "--console-log" in args else "--console-log"
    result = run_pyvmm("run", "--no-stdin", *args, output, files["NEW"], timeout=30)
    assert_one_line_error(result, status, needle)
    assert not os.path.exists(files["NEW"]), "an output file was created although the run was refused"


def test_outputs_are_not_created_when_the_machine_build_fails(tmp_path):
    payload = tmp_path / "too-big.bin"
    payload.write_bytes(bytes(1 << 20))  # refused by the x86_64 machine build (over 0xA0000), after validation
    log, stats = tmp_path / "console.log", tmp_path / "stats.json"
    result = run_pyvmm("run", "--no-stdin", "-k", str(payload), "--console-log", str(log), "--stats-json", str(stats))
    assert_one_line_error(result, 65, "real-mode payload")
    assert not log.exists() and not stats.exists()
