"""The terminal side of the guest console: output to stdout (and a log), input from stdin.

When stdin is a terminal it is put in raw mode so keys reach the guest unchanged; Ctrl-a x quits (as kvmtool and
QEMU do), Ctrl-a Ctrl-a sends a literal Ctrl-a. The terminal is restored on every exit path: `close()` runs when the
Vmm's run ends, however it ends.
"""

from __future__ import annotations

import os
import select
import termios
import threading
import tty
from typing import BinaryIO, Callable

ESCAPE = 0x01  # Ctrl-a


class ConsoleOutput:
    """Where guest console bytes go. Thread-safe: several vCPUs may write."""

    def __init__(self, fd: int = 1, log: BinaryIO | None = None, echo: bool = True) -> None:
        self._fd = fd
        self._log = log
        self._echo = echo
        self._lock = threading.Lock()
        self.listeners: list[Callable[[bytes], None]] = []

    def __call__(self, data: bytes) -> None:
        with self._lock:
            if self._echo:
                try:
                    os.write(self._fd, data)
                except (BrokenPipeError, BlockingIOError):
                    self._echo = False  # nobody reads stdout any more; the guest must not notice
            if self._log is not None:
                self._log.write(data)
                self._log.flush()
            for listener in self.listeners:
                listener(data)


class ConsoleInput:
    """Reads stdin on its own thread and feeds the UART; handles the quit escape in raw mode."""

    def __init__(self, feed: Callable[[bytes], None], on_quit: Callable[[], None], fd: int = 0) -> None:
        self._feed = feed
        self._on_quit = on_quit
        self._fd = fd
        self._saved: list | None = None
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._read_loop, name="console-input", daemon=True)
        self._escape_pending = False

    def start(self) -> None:
        try:
            os.fstat(self._fd)
        except OSError:
            return  # no stdin at all (CI, daemons)
        if os.isatty(self._fd):
            self._saved = termios.tcgetattr(self._fd)
            tty.setraw(self._fd)
        self._thread.start()

    def restore_terminal(self) -> None:
        if self._saved is not None:
            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    def close(self) -> None:
        self.restore_terminal()
        try:
            os.write(self._stop_w, b"x")
        except OSError:
            pass
        if self._thread.is_alive():
            self._thread.join(1.0)
        for fd in (self._stop_r, self._stop_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _filter(self, data: bytes) -> bytes:
        if self._saved is None:  # not a terminal: no escapes, bytes pass through
            return data
        out = bytearray()
        for byte in data:
            if self._escape_pending:
                self._escape_pending = False
                if byte in (ord("x"), ord("X")):
                    self._on_quit()
                    return bytes(out)
                out.append(byte if byte == ESCAPE else ESCAPE)
                if byte != ESCAPE:
                    out.append(byte)
            elif byte == ESCAPE:
                self._escape_pending = True
            else:
                out.append(byte)
        return bytes(out)

    def _read_loop(self) -> None:
        while True:
            try:
                ready, _, _ = select.select([self._fd, self._stop_r], [], [])
            except (OSError, ValueError):
                return
            if self._stop_r in ready:
                return
            try:
                data = os.read(self._fd, 4096)
            except OSError:
                return
            if not data:
                return  # EOF: the guest keeps running, it just gets no more input
            data = self._filter(data)
            if data:
                self._feed(data)

