"""Generate the out-of-line ABI-mode cffi modules _kvm_x86_64.py and _kvm_arm64.py.

    python -m pyvmm_bindings.build           # rewrite the committed modules
    python -m pyvmm_bindings.build --check   # exit 1 if they are stale

The generated modules need only _cffi_backend at run time (importing cffi's
pycparser-based parser costs tens of milliseconds). ABI mode computes struct
layouts from the declarations, not from a C compiler, so both modules can be
generated on any host; the declarations use fixed-width types to make that
layout host-independent, and tests/unit/test_bindings_layout.py checks it
against the real kernel headers.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CDEFS = HERE / "cdefs"
ARCHES = ("x86_64", "arm64")


def cdef_source(arch: str) -> str:
    """The declarations for one arch: <arch>.h first (kvm_run uses its types), then common.h and host.h."""
    if arch not in ARCHES:
        raise ValueError(f"unknown arch {arch!r}: expected one of {', '.join(ARCHES)}")
    return "\n".join((CDEFS / name).read_text() for name in (f"{arch}.h", "common.h", "host.h"))


def module_name(arch: str) -> str:
    return f"_kvm_{arch}"


def make_ffi(arch: str):
    import cffi  # only the generator needs the parser

    ffi = cffi.FFI()
    ffi.cdef(cdef_source(arch))
    ffi.set_source(module_name(arch), None)
    return ffi


def generate(arch: str, outdir: Path) -> Path:
    path = outdir / f"{module_name(arch)}.py"
    with contextlib.redirect_stdout(io.StringIO()):  # cffi prints "generating <file>"
        make_ffi(arch).emit_python_code(str(path))
    return path


def stale_modules(outdir: Path = HERE) -> list[str]:
    """Names of committed modules that differ from what the declarations generate now."""
    stale = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ARCHES:
            fresh = generate(arch, Path(tmp)).read_bytes()
            committed = outdir / f"{module_name(arch)}.py"
            if not committed.exists() or committed.read_bytes() != fresh:
                stale.append(committed.name)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyvmm_bindings.build", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed modules are stale")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_modules()
        if stale:
            print(f"stale cffi modules: {', '.join(stale)}; run: python -m pyvmm_bindings.build", file=sys.stderr)
            return 1
        print("cffi modules up to date")
        return 0
    for arch in ARCHES:
        print(f"wrote {generate(arch, HERE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
