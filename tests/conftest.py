"""Shared test helpers: how to run the pyvmm CLI as a user would, and whether this host can run KVM guests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def kvm_usable() -> str | None:
    """None when /dev/kvm can be opened, else the reason tests that need it are skipped."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError as err:
        return f"/dev/kvm is not usable here: {err.strerror}"
    os.close(fd)
    return None


def run_pyvmm(*args: str, timeout: float = 60, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """`pyvmm ARGS` in a subprocess (as `python -m pyvmm`, the same entry point as the console script)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "pyvmm", *args], capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=full_env, **kwargs)


@pytest.fixture
def pyvmm_cli():
    return run_pyvmm
