"""`-- CMD` as a run feature: the initramfs built around a command (pyvmm.initramfs.command), in a temporary file the
machine boots and that is removed as soon as it has been read; its exit channel is described in command.py."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from pyvmm.spec import VmSpec

if TYPE_CHECKING:
    from pyvmm.kvm.vm import Vm
    from pyvmm.vmm.vmm import Vmm


class CommandInitramfs:
    """`-- CMD`: writes the initramfs to a temporary file the machine boots, removed as soon as it has been read."""

    def __init__(self, spec: VmSpec) -> None:
        from pyvmm.initramfs import command as cmd

        testing = spec.testing
        request = cmd.CommandSpec(command=list(testing.command), busybox=testing.busybox or cmd.find_busybox(spec.arch),
                                  adds=[cmd.parse_add(a) for a in testing.adds], exit_mmio=cmd.exit_mmio_for(spec.arch),
                                  size_limit=spec.memory)
        data = cmd.build(request, spec.arch).to_gzip(level=1)  # speed over size: it is read once from the page cache
        fd, name = tempfile.mkstemp(prefix="pyvmm-initramfs-", suffix=".cpio.gz")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        self.path: Path | None = Path(name)

    def boot_spec(self, spec: VmSpec) -> VmSpec:
        """The spec the machine is built from: this initramfs, and a command line made for running one command."""
        words = spec.cmdline.split()
        if not any(w.startswith("panic=") for w in words):
            words.append("panic=-1")  # a panic ends the VM (status 80) instead of hanging it
        if not any(w in ("quiet", "debug") or w.startswith("loglevel=") for w in words):
            words.append("quiet")  # the command's output, not the boot log, is what the user asked for
        return dataclasses.replace(spec, initrd=self.path, cmdline=" ".join(words))

    def subscribe(self, vmm: "Vmm") -> None:
        # The machine has read the initramfs by the time vCPUs are created: remove the temporary file early.
        vmm.events.before_vcpus.subscribe(self._remove)

    def _remove(self, vm: "Vm | None" = None) -> None:
        path, self.path = self.path, None
        if path is not None:
            path.unlink(missing_ok=True)

    def close(self) -> None:
        self._remove()
