"""The guest console as a test sees it: everything printed so far, expect(pattern), send(line)."""

from __future__ import annotations

import codecs
import re
import threading
import time
from typing import Callable

TAIL_CHARS = 3000  # how much console an error message quotes
POLL = 0.05  # expect() looks again this often when no full line arrived (prompts end without a newline)


class ConsoleTimeout(AssertionError):
    """expect() did not see its pattern in time (or the VM ended first). An AssertionError so pytest reports it as a
    test failure, with the end of the console in the message."""


class Console:
    """Collects the guest's console bytes (fed by the VMM's output listener, on vCPU threads).

    `expect` searches from a cursor that advances past each match, like pexpect, so successive expects consume the
    output in order. Carriage returns are dropped from the text view so patterns can use plain `\\n`.
    """

    def __init__(self, send: Callable[[bytes], None], ended: Callable[[], str | None]) -> None:
        self._send = send
        self._ended = ended  # the reason the VM ended, None while it runs
        self._chunks = bytearray()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text: list[str] = []  # decoded pieces, joined lazily
        self._cond = threading.Condition()
        self.cursor = 0  # index into `text` where the next expect starts searching

    # called by ConsoleOutput on a vCPU thread
    def feed(self, data: bytes) -> None:
        with self._cond:
            self._chunks += data
            self._text.append(self._decoder.decode(data).replace("\r", ""))
            # The UART hands over one byte at a time: wake waiters per line, not per byte (they also poll).
            if b"\n" in data:
                self._cond.notify_all()

    def wake(self) -> None:
        """The VM ended: waiters should stop waiting for more output."""
        with self._cond:
            self._cond.notify_all()

    @property
    def raw(self) -> bytes:
        with self._cond:
            return bytes(self._chunks)

    @property
    def text(self) -> str:
        with self._cond:
            return self._joined()

    def _joined(self) -> str:
        if len(self._text) > 1:
            self._text[:] = ["".join(self._text)]
        return self._text[0] if self._text else ""

    def tail(self, chars: int = TAIL_CHARS) -> str:
        return self.text[-chars:]

    def expect(self, pattern: str | re.Pattern, timeout: float = 60.0) -> re.Match:
        """Wait until the console (after the cursor) matches `pattern`; return the match and move the cursor past it.

        Raises ConsoleTimeout after `timeout` seconds, or as soon as the VM has ended without a match.
        """
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                text = self._joined()
                match = regex.search(text, self.cursor)
                if match:
                    self.cursor = match.end()
                    return match
                ended = self._ended()
                left = deadline - time.monotonic()
                if ended is not None or left <= 0:
                    why = f"the VM ended ({ended})" if ended is not None else f"{timeout:g} s passed"
                    raise ConsoleTimeout(f"console did not match {regex.pattern!r}: {why}; console tail:\n"
                                         f"{text[-TAIL_CHARS:]}")
                self._cond.wait(min(left, POLL))

    def send(self, line: str | bytes, newline: bool = True) -> None:
        """Type into the guest's console (the UART's receive FIFO), with a newline by default."""
        data = line.encode() if isinstance(line, str) else bytes(line)
        self._send(data + (b"\n" if newline else b""))
