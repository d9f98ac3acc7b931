"""The cffi declarations, ioctl numbers and constants of pyvmm_bindings agree with the kernel headers: <linux/kvm.h>,
<linux/vhost.h>, <linux/if.h>, <linux/if_tun.h>, <linux/virtio_net.h> and <linux/falloc.h>.

For each arch, a C file including those headers is compiled with -S (never linked or
run, so the arm64 side needs only aarch64-linux-gnu-gcc and the arm64 cross headers):
every value to check becomes an immediate operand in an `.ascii "->N value"` line
(the kernel's asm-offsets trick), which is parsed from the assembly and compared
with what cffi computes. Checked: sizeof/alignof of every declared struct and union,
offsetof and sizeof of every field (recursively through nested and anonymous
structs/unions), every ioctl number, and
every constant in pyvmm_bindings.constants that the headers define.

A missing compiler or header skips with the reason, except when CI is set (CI
installs them, so there a missing tool is a failure).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

import pyvmm_bindings
from pyvmm_bindings import constants

ARCHES = ("x86_64", "arm64")
GNU_TRIPLE = {"x86_64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}
MASK64 = (1 << 64) - 1

# In constants.py on purpose but newer than Debian 12's 6.1 headers, so no header here defines them.
NEWER_THAN_HEADERS = {"KVM_EXIT_LOONGARCH_IOCSR", "KVM_EXIT_MEMORY_FAULT", "KVM_ARM_VCPU_HAS_EL2",
                      "KVM_CAP_PRE_FAULT_MEMORY"}
# Prefixes of the names in pyvmm_bindings.constants that the headers define (the rest are pyvmm's own tables).
CONSTANT_PREFIXES = ("KVM_", "FALLOC_FL_", "IFF_", "TUN_F_")
HEADERS = ("linux/kvm.h", "linux/vhost.h", "linux/if.h", "linux/if_tun.h", "linux/virtio_net.h", "linux/falloc.h")

PRELUDE = "#include <stddef.h>\n" + "".join(f"#include <{h}>\n" for h in HEADERS) + """\
/* asm/kvm.h (arm64) uses the kernel-internal SZ_64K in KVM_VGIC_V3_*_SIZE. */
#ifndef SZ_64K
#define SZ_64K 0x10000
#endif
#define EMIT(n, v) asm volatile("\\n.ascii \\"->" #n " %0\\"" :: "i"((unsigned long long)(v)))
void emit(void) {
"""


@dataclass(frozen=True)
class Check:
    what: str  # names the struct/field/ioctl/constant in a failure message
    c_expr: str
    expected: int  # what pyvmm_bindings says
    guard: str | None = None  # emit only #ifdef guard


def compiler_for(arch: str) -> str | None:
    """The C compiler targeting arch: <triple>-gcc, or plain gcc/cc on a host of that arch."""
    candidates = [f"{GNU_TRIPLE[arch]}-gcc"]
    if pyvmm_bindings.host_arch() == arch:
        candidates += ["gcc", "cc"]
    for name in candidates:
        if shutil.which(name):
            return name
    return None


def missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the tool must be installed)")
    pytest.skip(reason)


def field_checks(ffi, cname: str, ctype, prefix: str = "", base: int = 0) -> list[Check]:
    """offsetof/sizeof of every field of ctype, recursing into struct/union members.

    cffi lists the members of anonymous structs/unions as fields of the enclosing
    type (offsets relative to it), which is also how C names them in offsetof().
    """
    checks = []
    for name, field in ctype.fields:
        path = prefix + name
        offset = base + field.offset
        checks.append(Check(f"{cname}: offsetof({path})", f"offsetof({cname}, {path})", offset))
        ftype = field.type
        if not (ftype.kind == "array" and ftype.length is None):  # a flexible array has no sizeof
            checks.append(Check(f"{cname}: sizeof({path})", f"sizeof((({cname} *)0)->{path})", ffi.sizeof(ftype)))
        if ftype.kind in ("struct", "union"):
            checks += field_checks(ffi, cname, ftype, path + ".", offset)
        # Arrays are checked by offset and total size only; the element types that are
        # named structs get their own checks. (arm64 user_fpsimd_state.vregs is a
        # __uint128_t in C and a union in the cdef, so its elements cannot be compared.)
    return checks


def checks_for(arch: str) -> list[Check]:
    b = pyvmm_bindings.load(arch)
    ffi = b.ffi
    checks: list[Check] = []
    _typedefs, structs, unions = ffi.list_types()
    for kind, names in (("struct", structs), ("union", unions)):
        for tag in names:
            cname = f"{kind} {tag}"
            ctype = ffi.typeof(cname)
            checks.append(Check(f"{cname}: sizeof", f"sizeof({cname})", ffi.sizeof(ctype)))
            checks.append(Check(f"{cname}: alignof", f"_Alignof({cname})", ffi.alignof(ctype)))
            checks += field_checks(ffi, cname, ctype)
    for name, value in b.ioctls.items():
        checks.append(Check(f"ioctl {name}", name, value))
    for name, value in vars(constants).items():
        if not name.startswith(CONSTANT_PREFIXES):
            continue
        expected = value.get(arch) if isinstance(value, dict) else value
        if isinstance(expected, int):
            checks.append(Check(f"constant {name}", name, expected, guard=name))
    return checks


@functools.cache
def c_values(arch: str) -> tuple[list[Check], dict[int, int]] | str:
    """(checks, {check index: C value}) or, when it cannot be compiled, the reason."""
    cc = compiler_for(arch)
    if cc is None:
        return f"no C compiler for {arch} ({GNU_TRIPLE[arch]}-gcc) on PATH"
    checks = checks_for(arch)
    lines = [PRELUDE]
    for i, c in enumerate(checks):
        emit = f"    EMIT({i}, {c.c_expr});"
        lines.append(f"#ifdef {c.guard}\n{emit}\n#endif" if c.guard else emit)
    lines.append("}\n")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"layout_{arch}.c"
        src.write_text("\n".join(lines))
        probe = subprocess.run([cc, "-E", "-x", "c", "-", "-o", os.devnull],
                               input="".join(f"#include <{h}>\n" for h in HEADERS),
                               capture_output=True, text=True, timeout=60)
        if probe.returncode != 0:
            return f"{cc} cannot find the kernel headers for {arch}: {probe.stderr.strip().splitlines()[-1]}"
        result = subprocess.run([cc, "-S", "-O0", "-o", "-", str(src)], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        # A declared field the header does not have is a compile error: show it, it names the field.
        errors = [line for line in result.stderr.splitlines() if "error" in line][:10]
        pytest.fail(f"{arch}: the layout probe does not compile against the kernel headers:\n" + "\n".join(errors))
    found = {int(m.group(1)): int(m.group(2)) & MASK64
             for m in re.finditer(r"->(\d+) [$#]?(-?\d+)", result.stdout)}
    return checks, found


def mismatches(arch: str, kinds: tuple[str, ...]) -> list[str]:
    got = c_values(arch)
    if isinstance(got, str):
        missing(got)
    checks, found = got
    bad = []
    for i, c in enumerate(checks):
        if not c.what.startswith(kinds) or i not in found:
            continue
        if c.expected & MASK64 != found[i]:
            bad.append(f"{arch} {c.what}: pyvmm_bindings {c.expected:#x} != the headers' {found[i]:#x}")
    return bad


@pytest.mark.parametrize("arch", ARCHES)
def test_struct_layouts_match_kernel_headers(arch: str) -> None:
    bad = mismatches(arch, ("struct ", "union "))
    assert not bad, f"{len(bad)} layout differences:\n" + "\n".join(bad[:30])


@pytest.mark.parametrize("arch", ARCHES)
def test_every_struct_field_was_checked(arch: str) -> None:
    got = c_values(arch)
    if isinstance(got, str):
        missing(got)
    checks, found = got
    unchecked = [c.what for i, c in enumerate(checks) if c.guard is None and i not in found]
    assert not unchecked, f"{arch}: no value parsed from the assembly for: {unchecked[:10]}"
    assert any(c.what == "struct kvm_run: offsetof(io.port)" for c in checks)
    assert any(c.what == "struct vhost_vring_addr: offsetof(avail_user_addr)" for c in checks)
    assert any(c.what == "struct ifreq: offsetof(ifr_ifru.ifru_flags)" for c in checks)


@pytest.mark.parametrize("arch", ARCHES)
def test_ioctl_numbers_match_kernel_headers(arch: str) -> None:
    bad = mismatches(arch, ("ioctl ",))
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("arch", ARCHES)
def test_constants_match_kernel_headers(arch: str) -> None:
    bad = mismatches(arch, ("constant ",))
    assert not bad, "\n".join(bad)


def test_every_constant_is_defined_by_some_header() -> None:
    """Catches a misspelt name, which the #ifdef would otherwise silently skip."""
    defined: set[str] = set()
    for arch in ARCHES:
        got = c_values(arch)
        if isinstance(got, str):
            missing(got)
        checks, found = got
        defined |= {checks[i].guard for i in found if checks[i].guard}
    ours = {name for name in vars(constants) if name.startswith(CONSTANT_PREFIXES)}
    unknown = ours - defined - NEWER_THAN_HEADERS
    assert not unknown, f"constants no installed header defines (misspelt?): {sorted(unknown)}"
    assert NEWER_THAN_HEADERS <= ours


def test_known_ioctl_numbers_without_a_compiler() -> None:
    """Spot values from the kernel's documentation, so a machine with no compiler still checks something."""
    x86, arm = pyvmm_bindings.load("x86_64"), pyvmm_bindings.load("arm64")
    assert (x86.KVM_RUN, x86.KVM_SET_USER_MEMORY_REGION, x86.KVM_ENABLE_CAP) == (0xAE80, 0x4020AE46, 0x4068AEA3)
    assert (arm.KVM_ARM_VCPU_INIT, arm.KVM_GET_REG_LIST, arm.KVM_CREATE_DEVICE) == (0x4020AEAE, 0xC008AEB0, 0xC00CAEE0)
    assert arm.core_reg_id("regs", "pc") == 0x6030000000100040
    assert arm.ffi.sizeof("struct kvm_run") == x86.ffi.sizeof("struct kvm_run") == 2352
    # what vsock.py and net.py used to write by hand
    assert (x86.VHOST_SET_VRING_ADDR, x86.VHOST_GET_FEATURES, x86.VHOST_VSOCK_SET_RUNNING) == (
        0x4028AF11, 0x8008AF00, 0x4004AF61)
    assert (arm.TUNSETIFF, arm.TUNSETOFFLOAD, arm.TUNSETVNETHDRSZ) == (0x400454CA, 0x400454D0, 0x400454D8)


def test_generated_cffi_modules_are_up_to_date() -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    result = subprocess.run([sys.executable, "-m", "pyvmm_bindings.build", "--check"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
