"""One error style for every command: click's usage errors rephrased as pyvmm's one line (plus at most a hint), the
statuses of README's table, /dev/kvm advice from the device's real owner, group and mode."""

from __future__ import annotations

import os

import pytest

from pyvmm.api.protocol import dispatch
from pyvmm.cli import cli
from pyvmm.cli.errors import run_cli
from pyvmm.errors import UsageError
from pyvmm.idle.apply import IdlePolicyError
from pyvmm.kvm.system import permission_advice
from pyvmm.spec import VmSpec
from pyvmm.spec.core import format_size, parse_size


@pytest.mark.parametrize("argv, needle, hint", [
    (["run", "--bogus"], "No such option '--bogus'", "pyvmm run --help"),
    (["run", "-c", "x"], "'x' is not a valid integer", "pyvmm run --help"),
    (["nosuch"], "No such command 'nosuch'", "pyvmm --help"),
    (["ctl", "/nonexistent.sock", "set", "--halt-poll-ns", "-1"], "-1 is not in the range", "set --help"),
])
def test_click_usage_errors_read_as_pyvmm_errors(capsys, argv, needle, hint):
    assert run_cli(cli, argv) == 64
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("pyvmm: error: ") and needle in lines[0], lines
    assert lines[1].startswith("Try '") and hint in lines[1]


def test_a_pyvmm_error_is_one_line(capsys):
    assert run_cli(cli, ["run", "--no-stdin", "-c", "0"]) == 64
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("text", ["100000G", "16M", "3T", "1536K", "512M"])
def test_sizes_are_reported_as_written(text):
    assert format_size(parse_size(text)) == text


def test_too_much_memory_names_the_size_as_the_user_wrote_it():
    with pytest.raises(UsageError, match=r"^--memory 100000G is more than this host has"):
        VmSpec(memory=parse_size("100000G"), arch="x86_64").validate()


class _Controller:
    def __init__(self, err: Exception) -> None:
        self.err = err

    def change(self, change):
        raise self.err


@pytest.mark.parametrize("err, status", [(IdlePolicyError("arm64-only"), 69), (UsageError("no such CPU"), 64)])
def test_a_refused_change_carries_its_status(err, status):
    reply = dispatch({"cmd": "set", "halt_poll_ns": 0}, _Controller(err), vmm=None)
    assert reply == {"ok": False, "error": str(err), "status": status}


def test_a_malformed_request_is_a_usage_refusal():
    reply = dispatch({"cmd": "set"}, _Controller(RuntimeError()), vmm=None)
    assert not reply["ok"] and reply["status"] == 64


def _device(tmp_path, mode: int, gid: int) -> str:
    path = tmp_path / "kvm"
    path.write_bytes(b"")
    os.chmod(path, mode)
    os.chown(path, os.getuid(), gid)
    return str(path)


@pytest.mark.skipif(os.getuid() != 0, reason="chown to another group needs root")
def test_a_device_its_group_cannot_use_gets_acl_or_udev_advice(tmp_path):
    advice = permission_advice(_device(tmp_path, 0o600, 0))
    assert "mode 0600" in advice and "sudo setfacl -m u:$USER:rw" in advice and "udev rule" in advice
    assert "usermod" not in advice and "'root' group" not in advice


@pytest.mark.skipif(os.getuid() != 0, reason="chown to another group needs root")
def test_a_device_its_group_may_use_names_the_group(tmp_path):
    gid = 4242 if 4242 not in os.getgroups() else 4243
    advice = permission_advice(_device(tmp_path, 0o660, gid))
    assert "mode 0660" in advice and f"usermod -aG {gid} $USER" in advice and "setfacl" not in advice
