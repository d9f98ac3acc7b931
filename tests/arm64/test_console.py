"""The UART's transmit writes queued in KVM's coalesced MMIO ring and its status reads served from a read-only page,
with Linux (the lane's L2) booting without `quiet`: the console output is complete and the same as with an exit per
access, up to the kernel's last line before the power-off."""

from __future__ import annotations

import base64
import re

from tests.conftest import run_pyvmm

TIMEOUT = 600  # a console-heavy L2 boot under TCG-emulated EL2: pass/fail only
CMD = base64.b64encode(b"echo console-done").decode()


def _boot(l2_kernel, l2_initrd, *args: str):
    # printk.time=0: no timestamps, so two boots print the same text; no soft-lockup or RCU-stall reports, which
    # the emulated host's slowness triggers at random
    return run_pyvmm("run", "--no-stdin", "--debug", "-k", str(l2_kernel), "-i", str(l2_initrd), "-m", "512M",
                     "-p", f"printk.time=0 nowatchdog rcupdate.rcu_cpu_stall_suppress=1 panic=-1 pyvmm.cmd={CMD}",
                     *args, timeout=TIMEOUT)


def _lines(out: bytes) -> list[str]:
    """The console's lines with numbers masked (BogoMIPS, addresses and sizes may differ from boot to boot)."""
    return [re.sub(r"[0-9a-f]{2,}|\d", "#", line) for line in out.decode(errors="replace").splitlines()]


def test_a_verbose_linux_boot_prints_the_same_with_and_without_the_ring(l2_kernel, l2_initrd):
    queued = _boot(l2_kernel, l2_initrd)
    exits = _boot(l2_kernel, l2_initrd, "--no-coalesced-console")
    for result in (queued, exits):
        assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
        out = result.stdout.decode(errors="replace")
        assert "Booting Linux on physical CPU" in out and "PYVMM-L2-USERSPACE-OK" in out, out[-3000:]
        assert "console-done\r\nPYVMM-L2-CMD-EXIT 0\r\n" in out, out[-3000:]
    assert b"coalesced in KVM's ring" in queued.stderr
    assert b"coalesced in KVM's ring" not in exits.stderr
    through_ring = re.search(rb"(\d+) writes came through KVM's coalesced ring", queued.stderr)
    assert through_ring is not None and int(through_ring.group(1)) > 5000, queued.stderr[-2000:]
    # The status read before each byte came from the read-only page: a handful of reads exited (the tty's input
    # and THRE interrupts), not one per byte.
    assert b"register reads served from a read-only page" in queued.stderr
    assert b"read-only page" not in exits.stderr
    read_exits = re.search(rb"(\d+) register reads exited; the read-only page was mapped or unmapped (\d+) times",
                           queued.stderr)
    assert read_exits is not None, queued.stderr[-2000:]
    assert int(read_exits.group(1)) < int(through_ring.group(1)) // 10, read_exits.group(0)
    # The same lines, none lost, cut or doubled; their order is the kernel's (asynchronous initcalls such as the
    # initramfs unpacking interleave differently from boot to boot)
    assert sorted(_lines(queued.stdout)) == sorted(_lines(exits.stdout))
    # The kernel's last words ("reboot: Power down") come right before PSCI SYSTEM_OFF: only the drain at the end
    # of the VM outputs the bytes still queued then.
    assert queued.stdout.splitlines()[-1] == exits.stdout.splitlines()[-1]
