"""Cheap checks that keep the layout honest: packaging lists every package, the run loop's struct formats match."""

from __future__ import annotations

import tomllib

from tests.conftest import ROOT


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "pyvmm").rglob("__init__.py")}
    assert found <= listed, f"add to pyproject's packages: {sorted(found - listed)}"


def test_run_loop_exit_layouts_match_the_bindings():
    from pyvmm.kvm.ioctl import ffi
    from pyvmm.vmm import vcpu_thread

    base = ffi.offsetof("struct kvm_run", "io")
    assert [ffi.offsetof("struct kvm_run", "io", f) - base for f in
            ("direction", "size", "port", "count", "data_offset")] == [0, 1, 2, 4, 8]
    assert vcpu_thread.IO_EXIT.size == 16
    base = ffi.offsetof("struct kvm_run", "mmio")
    assert [ffi.offsetof("struct kvm_run", "mmio", f) - base for f in
            ("phys_addr", "data", "len", "is_write")] == [0, 8, 16, 20]
    assert vcpu_thread.MMIO_EXIT.size == 21
    assert vcpu_thread.MMIO_DATA_OFFSET == ffi.offsetof("struct kvm_run", "mmio", "data")
