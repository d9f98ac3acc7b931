"""Host contention on purpose: busy processes pinned to given CPUs, bounded in time and always reaped.

A per-VM WFx threshold traps WFI/WFE only when more than N tasks run on the vCPU's host CPU, so measuring it
needs that runqueue depth made real. `Hogs` starts `per_cpu` busy processes on each CPU; leaving the `with`
block (normally, on an exception, on KeyboardInterrupt) kills and reaps them. Two further guards cover what
a `with` block cannot: each hog ends by itself after `max_seconds`, and ends as soon as its parent is gone
(pyvmm killed by SIGKILL, or by a SIGTERM outside `terminate_raises()`).

The hogs are separate processes, not threads, so that they are tasks of their own on the runqueue, do not
hold this process's GIL, and can be killed without touching the VMM.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from pyvmm.errors import UsageError
from pyvmm.idle.hostcpus import HostCpus, read_host_cpus

# Beyond this many busy tasks per CPU a runqueue-depth threshold stops telling anything new (each extra task
# only shrinks the vCPU's share further) and the host becomes sluggish; KVM's threshold itself is a u64.
MAX_PER_CPU = 8
READY_TIMEOUT_S = 30.0  # a Python start under emulation takes a few seconds

# The hog: pin, say ready, spin until the deadline or until its parent is gone (checked every ~10^5 loops so
# that the loop stays a pure CPU burner, not a syscall loop).
_HOG = """\
import os, sys, time
os.sched_setaffinity(0, {{{cpu}}})
parent = os.getppid()
end = time.monotonic() + {seconds}
sys.stdout.write("r"); sys.stdout.flush()
while time.monotonic() < end and os.getppid() == parent:
    for _ in range(100000):
        pass
"""


class ContentionError(UsageError):
    """Contention levels or CPUs that cannot work (one-line message)."""


def parse_levels(text: str) -> tuple[int, ...]:
    """"0,1,2" -> (0, 1, 2): busy tasks per vCPU CPU for each step of a sweep, in the order given."""
    levels: list[int] = []
    for item in text.split(","):
        item = item.strip()
        try:
            n = int(item)
        except ValueError:
            raise ContentionError(f"--contend {text!r}: {item!r} is not a whole number of busy tasks per CPU") from None
        if n < 0:
            raise ContentionError(f"--contend {text!r}: {n} is negative; levels are busy tasks per CPU, 0 to "
                                  f"{MAX_PER_CPU}")
        if n > MAX_PER_CPU:
            raise ContentionError(f"--contend {text!r}: {n} busy tasks per CPU is over the limit of {MAX_PER_CPU} "
                                  f"(more only shrinks the vCPU's share further and stalls the host)")
        if n in levels:
            raise ContentionError(f"--contend {text!r}: level {n} given twice")
        levels.append(n)
    return tuple(levels)


@dataclass(frozen=True)
class Hog:
    cpu: int
    process: subprocess.Popen


class Hogs:
    """`per_cpu` busy processes pinned to each of `cpus` for the duration of a `with` block."""

    def __init__(self, cpus: set[int] | frozenset[int], per_cpu: int, *, max_seconds: float,
                 host: HostCpus | None = None, root: Path | str = "/") -> None:
        if not 0 <= per_cpu <= MAX_PER_CPU:
            raise ContentionError(f"busy tasks per CPU must be 0 to {MAX_PER_CPU}, got {per_cpu}")
        if max_seconds <= 0:
            raise ContentionError(f"busy tasks need a positive time bound, got {max_seconds} s")
        (host or read_host_cpus(root)).check(set(cpus), "busy tasks")
        self.cpus = sorted(cpus)
        self.per_cpu = per_cpu
        self.max_seconds = max_seconds
        self.hogs: list[Hog] = []

    @property
    def pids(self) -> list[int]:
        return [h.process.pid for h in self.hogs]

    def __enter__(self) -> Hogs:
        try:
            for cpu in self.cpus:
                for _ in range(self.per_cpu):
                    code = _HOG.format(cpu=cpu, seconds=self.max_seconds)
                    # -I -S: no site, no user paths: the fastest interpreter start, nothing imported but os/sys/time
                    proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", code], stdin=subprocess.DEVNULL,
                                            stdout=subprocess.PIPE)
                    self.hogs.append(Hog(cpu, proc))
            for hog in self.hogs:
                self._wait_ready(hog)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, hog: Hog) -> None:
        assert hog.process.stdout is not None
        ready, _, _ = select.select([hog.process.stdout], [], [], READY_TIMEOUT_S)
        if not ready or hog.process.stdout.read(1) != b"r":
            status = hog.process.poll()
            raise ContentionError(f"a busy task for CPU {hog.cpu} did not start within {READY_TIMEOUT_S:.0f} s"
                                  + (f" (exit status {status})" if status is not None else ""))

    def stop(self) -> None:
        """Kill and reap every hog (idempotent)."""
        for hog in self.hogs:
            if hog.process.poll() is None:
                hog.process.kill()
        for hog in self.hogs:
            hog.process.wait()
            if hog.process.stdout is not None:
                hog.process.stdout.close()
        self.hogs.clear()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def terminate_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises SystemExit(143) in the main thread so that `with` blocks (Hogs among
    them) clean up as on Ctrl-C; the previous handler comes back afterwards. A no-op off the main thread."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def wait_gone(pids: list[int], timeout_s: float = 5.0) -> list[int]:
    """The pids still alive after `timeout_s` (for callers and tests that check nothing was left behind)."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = [p for p in pids if _alive(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not reaped by its parent) is gone for our purpose
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
