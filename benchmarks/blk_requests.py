#!/usr/bin/env python3
"""The host work of one virtio-blk request, without a guest: instructions (callgrind) and syscalls (strace -c).

Builds what a VM has, minus KVM: guest RAM as a real `GuestMemory` (an anonymous mmap), the virtio-mmio transport,
the `Block` device on a temporary raw image and a `DeviceWorker` whose selector is turned by hand exactly as its
thread would (`select()`, then each ready callback). A model Linux driver plays the guest: per request it writes
the header, one descriptor per data segment (in an indirect table, as Linux does for chains of more than one
buffer) and the status byte, publishes the head, updates `used_event` (EVENT_IDX), kicks the queue's eventfd (what
KVM_IOEVENTFD does), and then, as Linux's vm_interrupt does on the interrupt, reads InterruptStatus, writes
InterruptACK and EOIs. The interrupt is arm64's edge irqfd (the EOI reaches no one); `--level` models x86_64's level
line instead, where KVM signals the resamplefd on EOI and that wakes the worker once more. Not counted: KVM itself
and the vCPU loop's decoding of the MMIO exits (the register accesses are called directly; in a VM the
InterruptStatus read comes from the read-only register page and only the ACK exits).

    python3 benchmarks/blk_requests.py --callgrind                 # instructions per request, every mode
    python3 benchmarks/blk_requests.py --strace                    # syscalls per request, every mode
    python3 benchmarks/blk_requests.py --mode write-4k -n 1000     # just run (e.g. under perf)

Per-request figures are differences of two runs (N and 5 N requests) divided by 4 N, so start-up cancels. The
callgrind figure is split: the device side (the worker's turns, everything pyvmm's worker thread does per request)
and the model driver (the rest: the guest's ring writes and reads, and the two register accesses of its interrupt
handler, which are the vCPU thread's and are not what a device change touches). The split needs the interpreter's
symbols (Debian's python3 has them through its debug link): the worker is turned through `sys.call_tracing`, one C
function (sys_call_tracing, not used by anything else here) whose inclusive cost is the device side.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pyvmm.devices.virtio import blk as b  # noqa: E402
from pyvmm.devices.virtio import constants as v  # noqa: E402
from pyvmm.devices.virtio.config import DiskConfig  # noqa: E402
from pyvmm.devices.virtio.transport import MmioTransport  # noqa: E402
from pyvmm.devices.virtio.worker import DeviceWorker  # noqa: E402
from pyvmm.kvm.memory import GuestMemory, MemoryRegion, allocate  # noqa: E402

RAM = 0x4000_0000
RAM_SIZE = 64 << 20
DESC, AVAIL, USED = RAM + 0x1000, RAM + 0x3000, RAM + 0x4000
TABLES = RAM + 0x10_0000  # one indirect table per ring slot, 4 KiB each
HEADERS = RAM + 0x20_0000  # header (16 bytes) + status byte, per ring slot
DATA = RAM + 0x100_0000  # data buffers: 16 MiB
QUEUE = 256
MODES = {"write-4k": (b.T_OUT, 4096, 4096), "read-4k": (b.T_IN, 4096, 4096),
         "write-1m": (b.T_OUT, 1 << 20, 8192), "read-1m": (b.T_IN, 1 << 20, 8192)}  # kind, size, segment


class EventfdLine:
    """IrqfdInterrupt without a VM: the trigger is an eventfd write; for a level line KVM's resample is the driver's
    EOI below."""

    def __init__(self, level: bool) -> None:
        self.trigger_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.resample_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) if level else None
        self.triggers = 0

    def trigger(self) -> None:
        self.triggers += 1
        os.eventfd_write(self.trigger_fd, 1)

    def lower(self) -> None:
        pass


class Guest:
    """A Linux-like driver for queue 0 of one virtio-blk device (VERSION_1, INDIRECT_DESC, EVENT_IDX, FLUSH)."""

    def __init__(self, transport: MmioTransport, memory: GuestMemory) -> None:
        self.t, self.memory = transport, memory
        self.avail_idx = 0
        self.used_seen = 0
        self.tables: dict[int, int] = {}  # the indirect table of each ring slot, written before the measurement
        reg = self.reg
        reg(v.MMIO_STATUS, 0)
        reg(v.MMIO_STATUS, v.STATUS_ACKNOWLEDGE | v.STATUS_DRIVER)
        offered = transport.device_features
        for sel in (0, 1):
            reg(v.MMIO_DRIVER_FEATURES_SEL, sel)
            reg(v.MMIO_DRIVER_FEATURES, offered >> 32 * sel & 0xFFFF_FFFF)
        status = v.STATUS_ACKNOWLEDGE | v.STATUS_DRIVER | v.STATUS_FEATURES_OK
        reg(v.MMIO_STATUS, status)
        reg(v.MMIO_QUEUE_SEL, 0)
        reg(v.MMIO_QUEUE_NUM, QUEUE)
        for low, addr in ((v.MMIO_QUEUE_DESC_LOW, DESC), (v.MMIO_QUEUE_DRIVER_LOW, AVAIL),
                          (v.MMIO_QUEUE_DEVICE_LOW, USED)):
            reg(low, addr & 0xFFFF_FFFF)
            reg(low + 4, addr >> 32)
        reg(v.MMIO_QUEUE_READY, 1)
        reg(v.MMIO_STATUS, status | v.STATUS_DRIVER_OK)
        assert transport.running, transport.broken

    def reg(self, offset: int, value: int) -> None:
        self.t.write(offset, 4, value)

    def submit(self, kind: int, sector: int, size: int, segment: int) -> None:
        slot = self.avail_idx % QUEUE
        header = HEADERS + 32 * slot
        self.memory.write(header, struct.pack("<IIQ", kind, 0, sector))
        if slot not in self.tables:  # the same buffers every lap: the guest's descriptor writes are not host work
            self.tables[slot] = self.table(slot, kind, size, segment)
        self.memory.write_int(AVAIL + 4 + 2 * slot, 2, slot)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.memory.write_int(AVAIL + 2, 2, self.avail_idx)

    def table(self, slot: int, kind: int, size: int, segment: int) -> int:
        header, table = HEADERS + 32 * slot, TABLES + 4096 * slot
        entries = [(header, 16, 0)]
        data_flags = v.DESC_F_WRITE if kind == b.T_IN else 0
        for i in range(size // segment):  # every other segment: no two adjacent, as guest pages usually are
            entries.append((DATA + (2 * i * segment) % (16 << 20), segment, data_flags))
        entries.append((header + 16, 1, v.DESC_F_WRITE))
        last = len(entries) - 1
        raw = b"".join(struct.pack("<QIHH", addr, length, flags | (v.DESC_F_NEXT if i < last else 0),
                                   i + 1 if i < last else 0)
                       for i, (addr, length, flags) in enumerate(entries))
        self.memory.write(table, raw)
        self.memory.write(DESC + 16 * slot, struct.pack("<QIHH", table, len(raw), v.DESC_F_INDIRECT, 0))
        return table

    def interrupt(self) -> int:
        """vm_interrupt + vring_interrupt: status, ACK, take the used buffers, used_event; returns how many."""
        status = self.t.read(v.MMIO_INTERRUPT_STATUS, 4)
        self.reg(v.MMIO_INTERRUPT_ACK, status)
        used = self.memory.read_int(USED + 2, 2)
        taken = (used - self.used_seen) & 0xFFFF
        for i in range(taken):
            slot = (self.used_seen + i) % QUEUE
            assert self.memory.read_int(HEADERS + 32 * slot + 16, 1) == b.S_OK
        self.used_seen = used
        self.memory.write_int(AVAIL + 4 + 2 * QUEUE, 2, used)  # used_event: interrupt me for the next one
        return taken


def run(mode: str, count: int, depth: int, level: bool) -> None:
    kind, size, segment = MODES[mode]
    memory = GuestMemory()
    memory.add(MemoryRegion(0, RAM, RAM_SIZE, allocate(RAM_SIZE)))
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "disk.img"
        with open(image, "wb") as f:
            f.truncate(64 << 20)
        device = b.Block(DiskConfig(image, cache="writeback"))
        line = EventfdLine(level)
        transport = MmioTransport(device, memory, line)
        worker = DeviceWorker("blk-bench")
        transport.serve_on(worker)
        guest = Guest(transport, memory)
        for slot in range(QUEUE):
            guest.tables[slot] = guest.table(slot, kind, size, segment)

        if hasattr(worker, "turn"):
            worker_turn = worker.turn
        else:  # before the worker had turn(): its selectors loop body
            def worker_turn(timeout: float) -> None:
                for key, _ in worker._selector.select(timeout):
                    key.data()
        call_tracing = sys.call_tracing  # no trace function is set: a plain call, through a C frame of its own

        def turn() -> None:  # the worker thread's loop, turned by hand: no thread, so counts stay exact
            call_tracing(worker_turn, (0,))  # the device side: callgrind's inclusive cost of sys_call_tracing

        turn()  # the activation's own kick
        gc.freeze()  # as pyvmm run does once its vCPUs run (pyvmm.cli.collector): set-up is never scanned again
        sectors = (64 << 20) // 512
        done = 0
        while done < count:
            batch = min(depth, count - done)
            for i in range(batch):
                guest.submit(kind, ((done + i) * size // 512) % (sectors - size // 512), size, segment)
            os.eventfd_write(transport.notify_fds[0], 1)  # the guest's QueueNotify, as KVM_IOEVENTFD signals it
            turn()
            assert guest.interrupt() == batch, "every request completed with one interrupt"
            if line.resample_fd is not None:
                os.eventfd_write(line.resample_fd, 1)  # the guest's EOI: KVM signals the resamplefd
                turn()
            done += batch
        assert transport.broken is None, transport.broken
        worker.close(device.close)
        transport.close()
        memory.close()


def measured(tool: list[str], mode: str, count: int, depth: int, level: bool, out: Path) -> str:
    cmd = tool + [sys.executable, __file__, "--mode", mode, "-n", str(count), "--depth", str(depth)]
    cmd += ["--level"] * level
    env = dict(os.environ, PYTHONHASHSEED="0")  # one string hashing for every run: repeatable counts
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return out.read_text()


DEVICE_SIDE = re.compile(r"^\s*([\d,]+) .*[:\s]sys_call_tracing\b", re.M)


def callgrind(mode: str, count: int, depth: int, level: bool, tmp: Path) -> tuple[float, float | None]:
    """(all, device side or None without the interpreter's symbols) instructions per request."""
    totals, device = [], []
    for n in (count, 5 * count):
        out = tmp / f"cg.{mode}.{n}"
        text = measured(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"], mode, n, depth, level, out)
        totals.append(int(re.search(r"^summary:\s*(\d+)", text, re.M).group(1)))
        inclusive = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", str(out)],
                                   check=True, capture_output=True, text=True).stdout
        found = DEVICE_SIDE.search(inclusive)
        device.append(int(found.group(1).replace(",", "")) if found else None)
    per_device = None if None in device else (device[1] - device[0]) / (4 * count)
    return (totals[1] - totals[0]) / (4 * count), per_device


def strace(mode: str, count: int, depth: int, level: bool, tmp: Path) -> dict[str, float]:
    counts = []
    for n in (count, 5 * count):
        out = tmp / f"st.{mode}.{n}"
        text = measured(["strace", "-f", "-c", "-o", str(out)], mode, n, depth, level, out)
        calls = {}
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 5 and parts[3].isdigit():
                calls[parts[-1]] = int(parts[3])
        counts.append(calls)
    per = {name: (counts[1].get(name, 0) - counts[0].get(name, 0)) / (4 * count) for name in counts[1]}
    return {name: value for name, value in sorted(per.items()) if value > 0.01 and name != "total"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=sorted(MODES), help="one mode, run once (no measurement)")
    parser.add_argument("-n", type=int, default=200, help="requests (per measured run: N and 5 N)")
    parser.add_argument("--depth", type=int, default=1, help="requests per kick (dd O_DIRECT: 1)")
    parser.add_argument("--level", action="store_true",
                        help="x86_64's level interrupt: the EOI wakes the worker through the resamplefd")
    parser.add_argument("--callgrind", action="store_true", help="instructions per request (valgrind)")
    parser.add_argument("--strace", action="store_true", help="syscalls per request (strace -c)")
    parser.add_argument("--modes", default=",".join(sorted(MODES)), help="modes measured (comma-separated)")
    args = parser.parse_args()
    if args.mode:
        run(args.mode, args.n, args.depth, args.level)
        return 0
    if not (args.callgrind or args.strace):
        parser.error("give --mode, --callgrind or --strace")
    for tool in ("valgrind",) * args.callgrind + ("strace",) * args.strace:
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes.split(","):
            kind, size, segment = MODES[mode]
            what = f"{mode:9s} ({size // segment} x {segment} B segments, depth {args.depth}" + \
                (", level)" if args.level else ")")
            if args.callgrind:
                per_request, device = callgrind(mode, args.n, args.depth, args.level, Path(tmp))
                split = "device side unknown: no symbol for sys_call_tracing in this python" if device is None \
                    else f"device side {device:8,.0f}, model driver {per_request - device:8,.0f}"
                print(f"{what}: {per_request:10,.0f} instructions per request ({split})", flush=True)
            if args.strace:
                calls = strace(mode, args.n, args.depth, args.level, Path(tmp))
                print(f"{what}: syscalls per request " + ", ".join(f"{k} {x:.2f}" for k, x in calls.items()),
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
