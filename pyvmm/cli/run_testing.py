"""`pyvmm run` options of the testing area (see pyvmm/cli/areas.py)."""

from __future__ import annotations

from typing import Any

from pyvmm.cli.areas import NoHooks
from pyvmm.config import VmConfig

OPTIONS: list = []


def setup(config: VmConfig, values: dict[str, Any]) -> NoHooks:
    return NoHooks()
