"""One ioctl layer: only pyvmm/kvm (Kvm, Vm, Vcpu and the call itself) and the typed wrappers of the device fds
(vhost-vsock, TAP) issue ioctls; nobody else calls fcntl.ioctl or libc's ioctl, or writes an ioctl number by hand."""

from __future__ import annotations

import re

from tests.conftest import ROOT

PACKAGE = ROOT / "pyvmm"
LAYER = {"pyvmm/kvm", "pyvmm/devices/virtio/vhost.py", "pyvmm/devices/virtio/tap.py"}
# Files allowed to call ioctl() themselves until their calls move onto Kvm/Vm/Vcpu methods: none left.
PENDING: set[str] = set()

FORBIDDEN_EVERYWHERE = {
    "fcntl.ioctl": re.compile(r"\bfcntl\.ioctl\b"),
    "an _IO/_IOR/_IOW helper": re.compile(r"def _?_?io[rw]?\(", re.IGNORECASE),
    "a hand-written KVM/vhost/TUN ioctl number": re.compile(r"\b0x(?:[0-9A-Fa-f]{2}_?[0-9A-Fa-f]{2}_?)?(?:AE|AF|54)"
                                                            r"[0-9A-Fa-f]{2}\b"),
    "a private cffi FFI": re.compile(r"\bcffi\.FFI\("),
}
RAW_CALL = re.compile(r"\blib\.ioctl\b|^from pyvmm\.kvm\.ioctl import .*\bioctl\b", re.MULTILINE)


def _modules() -> dict[str, str]:
    return {str(path.relative_to(ROOT)): path.read_text() for path in sorted(PACKAGE.rglob("*.py"))}


def _in_layer(name: str) -> bool:
    return any(name == part or name.startswith(part + "/") for part in LAYER)


def test_no_module_outside_the_layer_issues_ioctls_itself():
    offenders = [name for name, text in _modules().items()
                 if not _in_layer(name) and name not in PENDING and RAW_CALL.search(text)]
    assert not offenders, f"call a Kvm/Vm/Vcpu method (or add one) instead of ioctl() in: {offenders}"


def test_no_module_packs_ioctls_by_hand():
    found = [f"{name}: {what}" for name, text in _modules().items() if not name.startswith("pyvmm/kvm/")
             for what, pattern in FORBIDDEN_EVERYWHERE.items() if pattern.search(text)]
    assert not found, "\n".join(found)


def test_the_pending_list_names_real_files():
    assert all((ROOT / name).exists() for name in PENDING | LAYER)


def test_the_patterns_catch_what_they_are_for():
    samples = {"fcntl.ioctl": "fcntl.ioctl(fd, 0xAE01, 0)", "an _IO/_IOR/_IOW helper": "def _iow(nr, size):",
               "a hand-written KVM/vhost/TUN ioctl number": "TUNSETIFF = 0x4004_54CA",
               "a private cffi FFI": "ffi = cffi.FFI()"}
    for what, sample in samples.items():
        assert FORBIDDEN_EVERYWHERE[what].search(sample), what
    assert not FORBIDDEN_EVERYWHERE["a hand-written KVM/vhost/TUN ioctl number"].search("MMIO_SIZE = 0x200")
    assert RAW_CALL.search("from pyvmm.kvm.ioctl import bindings, ioctl, new")
