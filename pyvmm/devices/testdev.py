"""The pyvmm test device: how a bare-metal guest hands its verdict, its measurements and its arguments to pyvmm.

Register map (docs/MACHINES.md): EXIT at 0x00, SINK at 0x04, ARG at 0x08 (read), DATA at 0x10 (write).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable, Iterable

from pyvmm.devices.placement import GuestIdentity

EXIT = 0x00
SINK = 0x04
ARG = 0x08
DATA = 0x10
SIZE = 0x20  # the register file: what either machine maps, whatever the bus


class TestDevice:
    name = "pyvmm-testdev"
    identity = GuestIdentity("pyvmm-testdev", ("pyvmm,testdev",))

    def __init__(self, on_exit: Callable[[int], None], args: Iterable[int] = ()) -> None:
        self._on_exit = on_exit
        self._args = deque(int(a) & 0xFFFFFFFF for a in args)
        self._lock = threading.Lock()
        self.data: list[int] = []
        self.exit_status: int | None = None

    def read(self, offset: int, size: int) -> int:
        if offset == ARG:
            with self._lock:
                return self._args.popleft() if self._args else 0
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == SINK:
            return
        if offset == DATA:
            with self._lock:
                self.data.append(value)
        elif offset == EXIT:
            self.exit_status = value & 0xFF
            self._on_exit(self.exit_status)
