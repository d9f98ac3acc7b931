"""The bundled hostile guest (a malicious virtio-blk driver) against pyvmm on /dev/kvm: the device answers each
attack as the spec says and works again after a reset; pyvmm stays up, small and quick (tests/hostile_guest.py)."""

from __future__ import annotations

from tests.hostile_guest import check_bounded, check_survived, run_hostile


def test_a_hostile_guest_cannot_take_pyvmm_down(tmp_path):
    run = run_hostile("x86_64", tmp_path, memory_mib=64, timeout=120)
    check_survived(run)
    check_bounded(run, memory_mib=64, seconds=30)
