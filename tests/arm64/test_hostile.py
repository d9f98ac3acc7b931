"""The bundled hostile guest (a malicious virtio-blk driver) against pyvmm on arm64 KVM: the device answers each
attack as the spec says and works again after a reset; pyvmm stays up and small (tests/hostile_guest.py).
Wall time is bounded loosely: the lane's host is emulated."""

from __future__ import annotations

from tests.hostile_guest import check_bounded, check_survived, run_hostile


def test_a_hostile_guest_cannot_take_pyvmm_down(tmp_path):
    run = run_hostile("arm64", tmp_path, memory_mib=64, timeout=600)
    check_survived(run)
    check_bounded(run, memory_mib=64, seconds=400)
