"""unittests.cfg, read line by line exactly as kvm-unit-tests' for_each_unittest (scripts/common.bash) reads it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from pyvmm.errors import MissingFileError, UsageError

# Keys whose value may span lines between triple quotes (`qemu_params = """ ... """`).
PARAMS_KEYS = ("extra_params", "qemu_params", "kvmtool_params")
_SCALAR_KEYS = ("file", "smp", "test_args", "groups", "arch", "machine", "check", "accel", "timeout", "disabled_if")
_SECTION = re.compile(r"^\[(.*)\]$")
_KEY = re.compile(r"^(\w+) *= *(.*)$")
_TRIPLE = '"""'


@dataclass
class UnitTest:
    """One section of unittests.cfg; values are kept as written (shell text) and expanded when the test runs."""

    name: str
    file: str = ""
    smp: str = "1"
    test_args: str = ""
    params: dict[str, str] = field(default_factory=dict)  # extra_params / qemu_params / kvmtool_params
    groups: tuple[str, ...] = ()
    arch: str = ""
    machine: str = ""
    check: str = ""
    accel: str = ""
    timeout: str = ""
    disabled_if: str = ""


def find_config(directory: Path) -> Path:
    """DIR/unittests.cfg (a copy of the built tests) or DIR/arm/unittests.cfg (a kvm-unit-tests source tree)."""
    if not directory.is_dir():
        raise MissingFileError(f"{directory} is not a directory: pass the kvm-unit-tests folder (built for arm64)")
    for candidate in (directory / "unittests.cfg", directory / "arm" / "unittests.cfg"):
        if candidate.is_file():
            return candidate
    raise MissingFileError(f"{directory} has no unittests.cfg (nor arm/unittests.cfg): pass the kvm-unit-tests folder "
                           f"that holds the arm64 build")


def parse(text: str, source: str = "unittests.cfg") -> list[UnitTest]:
    tests: list[UnitTest] = []
    current: UnitTest | None = None
    lines = iter(text.splitlines())
    for raw in lines:
        line = raw.strip()  # `read -r` strips the blanks around a line
        section = _SECTION.match(line)
        if section:
            current = UnitTest(section.group(1))
            tests.append(current)
            continue
        key = _KEY.match(line)
        if current is None or key is None:
            continue  # comments, blank lines and keys before the first section mean nothing to the runner either
        name, value = key.groups()
        if name in PARAMS_KEYS:
            if value.startswith(_TRIPLE):
                value = _read_triple_quoted(value[len(_TRIPLE):], lines, source, current.name)
            current.params[name] = value
        elif name == "groups":
            current.groups = tuple(value.split())
        elif name in _SCALAR_KEYS:
            setattr(current, name, value)
    names = [test.name for test in tests]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise UsageError(f"{source} defines {', '.join(duplicates)} more than once: each test name must be unique")
    return tests


def _read_triple_quoted(first: str, lines, source: str, test: str) -> str:
    """Lines up to the closing triple quote; a backslash at the end of a line joins it to the next, as upstream."""
    text = first
    if first.rstrip().endswith(_TRIPLE):
        return first.rstrip()[: -len(_TRIPLE)]
    for raw in lines:
        text = text[:-1] if _odd_trailing_backslashes(text) else text + "\n"
        line = raw.rstrip("\n")
        if line.rstrip().endswith(_TRIPLE):
            return text + line.rstrip()[: -len(_TRIPLE)]
        text += line
    raise UsageError(f"{source}: [{test}] opens a {_TRIPLE} value that never closes")


def _odd_trailing_backslashes(text: str) -> bool:
    return (len(text) - len(text.rstrip("\\"))) % 2 == 1


def load(directory: Path) -> tuple[Path, list[UnitTest]]:
    path = find_config(directory)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise MissingFileError(f"cannot read {path}: {err.strerror}") from None
    tests = parse(text, str(path))
    if not tests:
        raise UsageError(f"{path} defines no tests ([name] sections): is it a kvm-unit-tests unittests.cfg?")
    return path, tests
