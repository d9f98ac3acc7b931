"""The environ file a test gets as its initrd, written as kvm-unit-tests' initrd_create (scripts/arch-run.bash) does.

Tests read `KEY=VALUE` lines from it: KERNEL_* (the host kernel's version) and ERRATA_<commit>=y|n, which say
whether the host kernel has a fix that a test would otherwise crash the host or fail on (the timer test checks
ERRATA_7b6b46311a85).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from pyvmm.errors import MissingFileError, UsageError

TARGET = "kvmtool"  # pyvmm takes the role (and the option spelling) of kvm-unit-tests' kvmtool target
_ENV_LINE = re.compile(r"^[ \t]*([A-Za-z_][A-Za-z0-9_]*)=")


def _leading_digits(text: str) -> str:
    match = re.match(r"\d*", text)
    return match.group(0) if match else ""


@dataclass(frozen=True)
class KernelVersion:
    """`uname -r` split as env_params splits it: 6.12.48+deb13-arm64 -> 6, 12, "48", ""."""

    string: str
    version: str
    patchlevel: str
    sublevel: str
    extraversion: str

    @classmethod
    def parse(cls, release: str) -> KernelVersion:
        version, _, rest = release.partition(".")
        patchlevel, _, rest = rest.partition(".")
        sublevel, _, extra = rest.partition("-")
        return cls(release, version, patchlevel, _leading_digits(sublevel), _leading_digits(extra))

    def lines(self) -> list[str]:
        return [f"KERNEL_VERSION_STRING={self.string}", f"KERNEL_VERSION={self.version}",
                f"KERNEL_PATCHLEVEL={self.patchlevel}", f"KERNEL_SUBLEVEL={self.sublevel}",
                f"KERNEL_EXTRAVERSION={self.extraversion}"]

    def has(self, minimum: str, source: str) -> bool:
        """Whether this kernel is at least `minimum` (errata.txt's second column), compared as env_generate_errata."""
        v, _, rest = minimum.partition(".")
        p, _, rest = rest.partition(".")
        s, _, x = rest.partition("-")
        s, x = _leading_digits(s), _leading_digits(x)
        if not (v.isdigit() and p.isdigit()):
            raise UsageError(f"{source}: bad minimum kernel version {minimum!r}: fix or remove that line")
        if not (self.version.isdigit() and self.patchlevel.isdigit()):
            return False  # a release string we cannot read (upstream's arithmetic would fail): no fix assumed
        mine = (int(self.version), int(self.patchlevel))
        if mine != (int(v), int(p)):
            return mine > (int(v), int(p))
        if self.sublevel and s:
            if int(self.sublevel) != int(s):
                return int(self.sublevel) > int(s)
            if self.extraversion and x:
                return int(self.extraversion) >= int(x)
            return not (x and int(x) != 0)
        return not (s and int(s) != 0)


def read_errata(path: Path) -> list[tuple[str, str]]:
    """(commit, minimum kernel version) of each errata.txt line, blanks removed, comments skipped."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise MissingFileError(f"cannot read {path}: {err.strerror}") from None
    errata = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        fields = "".join(line.split()).split(":")
        if fields[0]:
            errata.append((fields[0], fields[1] if len(fields) > 1 else ""))
    return errata


def build(kernel: KernelVersion, errata: list[tuple[str, str]], environment: Mapping[str, str], *,
          source: str = "errata.txt", extra: str = "") -> str:
    """The file's text. `environment` plays the role of the runner's shell environment: ERRATA_* set there win
    (and are written), as with upstream's `ERRATA_<commit>=n ./run_tests.sh`; `extra` is a user's own environ
    file (upstream's KVM_UNIT_TESTS_ENV), whose variables are added unless already set."""
    lines = [f"TARGET={TARGET}", *kernel.lines()]
    present = {line.partition("=")[0] for line in lines}
    for line in extra.splitlines():
        match = _ENV_LINE.match(line)
        if match and match.group(1) not in present:
            lines.append(line.strip())
            present.add(match.group(1))
    chosen = {key: value for key, value in environment.items() if key.startswith("ERRATA_")}
    for commit, minimum in errata:
        chosen.setdefault(f"ERRATA_{commit}", "y" if kernel.has(minimum, source) else "n")
    new = sorted(f"{key}={value}" for key, value in chosen.items() if key not in present)
    return "\n".join(lines) + "\n" + "\n".join(new) + "\n"
