"""The UART's transmit writes queued in KVM's coalesced PIO ring, on this host's /dev/kvm: the console output is
byte for byte the same as with an exit per write, including the bytes written just before the guest's EXIT."""

from __future__ import annotations

import pytest
from pyvmm_bindings import constants as c

from pyvmm.kvm.system import Kvm
from pyvmm.spec.options import RunOptions, build_spec
from pyvmm.vmm.runner import VmRun
from tests.conftest import run_pyvmm

GREETING = b"Hello from the pyvmm x86_64 guest\n"


def _coalesced_pio() -> bool:
    kvm = Kvm.open()
    try:
        return bool(kvm.check_extension(c.KVM_CAP_COALESCED_MMIO) and kvm.check_extension(c.KVM_CAP_COALESCED_PIO))
    finally:
        kvm.close()


def _run_hello(coalesce: bool) -> tuple[bytes, int, int]:
    """(console output, exit status, how many writes went through KVM's ring)."""
    out: list[bytes] = []
    spec = build_spec(stdin=False, echo=False, options=RunOptions(no_coalesced_console=not coalesce))
    run = VmRun(spec)
    run.vmm.output.listeners.append(out.append)
    uart = run.build().uart
    result = run.run()
    return b"".join(out), result.status, uart.queued_writes


@pytest.mark.skipif(not _coalesced_pio(), reason="this KVM has no coalesced PIO")
def test_the_output_is_the_same_with_and_without_the_ring():
    queued, status, through_ring = _run_hello(coalesce=True)
    exits, status_without, none = _run_hello(coalesce=False)
    assert queued == exits == GREETING
    assert status == status_without == 0
    # Every byte went through the ring, the newline too: the guest's EXIT came right after it, so only the drain
    # at the end of the VM can have output it.
    assert (through_ring, none) == (len(GREETING), 0)


@pytest.mark.parametrize("flag", [[], ["--no-coalesced-console"]])
def test_the_cli_prints_the_whole_greeting_either_way(tmp_path, flag):
    log = tmp_path / "console.log"
    result = run_pyvmm("run", "--no-stdin", *flag, "--console-log", str(log))
    assert result.returncode == 0, result.stderr
    assert result.stdout == log.read_bytes() == GREETING


def test_fail_on_a_line_whose_end_was_still_queued_fails_the_run():
    """The guest exits right after the newline of the matching line: the verdict still counts (exit status 1)."""
    result = run_pyvmm("run", "--no-stdin", "--fail-on", "pyvmm x86_64")
    assert result.returncode == 1, result.stderr
    assert result.stderr.decode().rstrip().endswith(GREETING.decode().rstrip())
