"""tests/arm64 runs only inside the arm64 lane (tests/arm64/lane), which boots an emulated arm64 host with real
arm64 KVM. Anywhere else every module here is reported as skipped without being imported (so a test module may
import arm64-only code at its top)."""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent


def _skip_reason() -> str | None:
    if platform.machine() != "aarch64":
        return f"arm64 tests run inside the emulated arm64 host: use tests/arm64/lane (this is {platform.machine()})"
    if os.environ.get("PYVMM_IN_LANE") != "1":
        return "arm64 tests run inside the arm64 lane (PYVMM_IN_LANE is not set): use tests/arm64/lane"
    return None


SKIP_REASON = _skip_reason()


class _SkippedModule(pytest.Module):
    """Reports the module as skipped at collection time instead of importing it."""

    def collect(self):
        pytest.skip(SKIP_REASON)


def pytest_pycollect_makemodule(module_path: Path, parent):
    if SKIP_REASON is not None and _HERE in module_path.resolve().parents:
        return _SkippedModule.from_parent(parent, path=module_path)
    return None


@dataclass(frozen=True)
class HostKernel:
    kind: str       # "stock" (Debian's linux-image-6.12-arm64) or "custom" (--host-kernel PATH)
    release: str    # uname -r of the emulated host


def _env_path(name: str) -> Path:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: the lane announces the L2 artifacts through it")
    return Path(value)


@pytest.fixture(scope="session")
def l2_kernel() -> Path:
    """The L2 guest's arm64 Linux Image (Debian's 6.12 kernel; virtio drivers are modules in its initramfs)."""
    return _env_path("PYVMM_TEST_L2_KERNEL")


@pytest.fixture(scope="session")
def l2_initrd() -> Path:
    """The L2 guest's gzipped busybox initramfs (contract: tests/arm64/README.md)."""
    return _env_path("PYVMM_TEST_L2_INITRD")


@pytest.fixture(scope="session")
def l2_modules() -> list[str]:
    """Names of the kernel modules the L2 initramfs loads at boot, in load order."""
    return os.environ.get("PYVMM_TEST_L2_MODULES", "").split()


@pytest.fixture(scope="session")
def lane_host_kernel() -> HostKernel:
    kind, _, release = os.environ.get("PYVMM_LANE_HOST_KERNEL", "").partition(" ")
    if kind not in ("stock", "custom"):
        pytest.fail("PYVMM_LANE_HOST_KERNEL is not 'stock|custom <uname -r>'")
    return HostKernel(kind, release)


@pytest.fixture(scope="session")
def lane_host_cmdline() -> list[str]:
    """The emulated host's kernel command line (includes the lane's --append arguments)."""
    return Path("/proc/cmdline").read_text().split()
