"""The bash semantics unittests.cfg values rely on (`$MAX_SMP`, `$((...))`, quotes, `[[ ... ]]`), from bash itself.

kvm-unit-tests' runner eval's these values in bash; asking bash gives the same words and the same truth, rather
than an imitation that differs on the next clever expression someone writes into a cfg file.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Mapping

from pyvmm.errors import KvmUnavailableError, UsageError

_WORDS = 'eval "set -- $1" && printf "%s\\0" "$@"'


def _bash() -> str:
    path = shutil.which("bash")
    if path is None:
        raise KvmUnavailableError("bash is not installed: unittests.cfg values are bash text; install bash")
    return path


def words(text: str, variables: Mapping[str, str], what: str) -> list[str]:
    """The words `text` expands to in bash, with `variables` set (e.g. MAX_SMP). A line break of a triple-quoted
    value separates words (upstream would run the next line as a command unless it ends in a backslash)."""
    if not text.strip():
        return []
    result = subprocess.run([_bash(), "-c", _WORDS, "bash", text.replace("\n", " ")], env=dict(variables), capture_output=True,
                            timeout=10, check=False)
    if result.returncode != 0:
        detail = result.stderr.decode(errors="replace").strip().splitlines()
        raise UsageError(f"{what} {text!r} is not valid bash text{': ' + detail[-1] if detail else ''}")
    return [word.decode(errors="replace") for word in result.stdout.split(b"\0")[:-1]]


def condition(text: str, variables: Mapping[str, str]) -> bool:
    """Whether the bash command `text` (a `disabled_if` value) succeeds, with `variables` set."""
    result = subprocess.run([_bash(), "-c", text], env=dict(variables), capture_output=True, timeout=10,
                            check=False, stdin=subprocess.DEVNULL)
    return result.returncode == 0
