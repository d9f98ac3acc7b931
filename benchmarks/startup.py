#!/usr/bin/env python3
"""Start-up latency: fork to the guest's first output byte, and fork to process exit, for the hello guest.

Compared, interleaved (order rotated every repetition), each a fresh process with stdout on a pipe:
  pyvmm    `pyvmm run --no-stdin -m 64M` (the bundled hello guest)
  kvmtool  `lkvm run -k hello.bin -m 64 -c 1 --console serial`                    (--lkvm PATH)
  QEMU     `qemu-system-x86_64 -M microvm ...` booting the same hello.bin          (--qemu PATH)
QEMU has no flat-binary loader for x86: hello.bin needs a writable stack (it pushes and calls), so it cannot run
from the read-only BIOS ROM itself. The script builds a 64 KiB BIOS whose reset vector (F000:FFF0) is one far jump
to 1000:0000, and `-device loader` puts hello.bin in RAM at 0x10000: the same entry state as pyvmm and kvmtool.
`-device isa-debug-exit,iobase=0x500` makes the guest's EXIT write end QEMU (status (0 << 1) | 1 = 1).
kvmtool has no test device; the guest's EXIT falls back to a triple fault, which ends kvmtool with status 0.

Also timed in the same rotation, as whole processes: `pyvmm --help` and `pyvmm probe` (target < 80 ms each).
Before timing, pyvmm's bytecode caches are made to exist (see _common.ensure_bytecode): PYTHONDONTWRITEBYTECODE
would otherwise make every start compile every module, which a user's install does not do.

"First byte" is the arrival time of the pipe read that brought the first byte of the greeting (kvmtool's own
banner goes to stderr, but the script does not rely on that). It also reports the interpreter that runs pyvmm,
its bare start-up, and `python -X importtime` top offenders for `pyvmm run`.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _common import (GUESTS_X86, Summary, default_pyvmm, editable_note, ensure_bytecode, machine_info, machine_note,
                     pyvmm_install, resolve_tool, script_interpreter, table, verdict, write_json)

GREETING = b"Hello from the pyvmm x86_64 guest"
QEMU_FACTOR = 1.5     # pyvmm / QEMU microvm, first byte and exit (the goal beyond: below QEMU microvm)
KVMTOOL_FACTOR = 3.0  # pyvmm / kvmtool: a reference
CLI_MS = 80.0         # `pyvmm --help` and `pyvmm probe`, whole process


@dataclass
class Run:
    first_byte: float | None  # None for a command that boots no guest
    exit: float


@dataclass
class Contender:
    name: str
    cmd: list[str]
    status: int  # the exit status a correct run ends with
    boots: bool = True  # False: a CLI command (--help, probe), timed to its exit only


def measure(c: Contender) -> Run:
    """One run: wall time from just before fork to the greeting's first byte, and to the process's exit."""
    chunks: list[tuple[int, float]] = []  # (bytes received so far after this read, time of the read)
    data = bytearray()
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(c.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        fd = proc.stdout.fileno()
        while chunk := os.read(fd, 65536):
            data += chunk
            chunks.append((len(data), time.perf_counter()))
        try:
            status = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            sys.exit(f"startup: {c.name} did not exit within 60 s")
        ended = time.perf_counter()
        proc.stdout.close()
        at = data.find(GREETING) if c.boots else len(data)
        if status != c.status or at < 0:
            err.seek(0)
            tail = err.read().decode(errors="replace").strip().splitlines()[-1:] or ["(nothing on stderr)"]
            sys.exit(f"startup: {c.name} ended with status {status} (expected {c.status}), greeting "
                     f"{'seen' if at >= 0 else 'missing'}: {tail[0]}")
    if not c.boots:
        return Run(None, ended - start)
    first = next(t for upto, t in chunks if upto > at)
    return Run(first - start, ended - start)


def qemu_bios(workdir: Path) -> Path:
    """64 KiB BIOS image: all 0xFF except the reset vector at offset 0xFFF0, `ljmp $0x1000, $0x0000`."""
    image = bytearray(b"\xff" * 0x10000)
    image[0xFFF0:0xFFF5] = bytes([0xEA, 0x00, 0x00, 0x00, 0x10])
    path = workdir / "jump-to-0x10000.bios"
    path.write_bytes(image)
    return path


def bare_startup(python: str, flags: list[str], reps: int) -> Summary:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        subprocess.run([python, *flags, "-c", "pass"], check=True, timeout=30)
        times.append(time.perf_counter() - start)
    return Summary.of(times)


def import_times(python: str, pyvmm: str, memory: str, runs: int = 3) -> list[tuple[int, int, str]]:
    """(cumulative us, self us, module) of every import `pyvmm run` makes, from -X importtime, biggest first.

    Each figure is the minimum over a few runs: one preempted import in a single run would otherwise top the list.
    """
    best: dict[str, tuple[int, int]] = {}
    for _ in range(runs):
        proc = subprocess.run([python, "-X", "importtime", pyvmm, "run", "--no-stdin", "-m", memory],
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        for line in proc.stderr.splitlines():
            m = re.match(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)", line)
            if m:
                name, own, cum = m.group(3)[1:] + m.group(4), int(m.group(1)), int(m.group(2))
                old = best.get(name)
                best[name] = (cum, own) if old is None else (min(old[0], cum), min(old[1], own))
    return sorted(((cum, own, name) for name, (cum, own) in best.items()), reverse=True)


def ratio_line(name: str, first: dict[str, Summary], done: dict[str, Summary], factor: float) -> dict[str, object]:
    """Print pyvmm/NAME for first byte and exit against the factor; return the figures for the JSON summary."""
    r1, r2 = first["pyvmm"].median / first[name].median, done["pyvmm"].median / done[name].median
    v1, v2 = verdict(r1, factor), verdict(r2, factor)
    print(f"pyvmm/{name}: first byte {r1:.2f}x, exit {r2:.2f}x   target <= {factor:g}x -> first byte {v1}, exit {v2}")
    return {"first_byte": r1, "exit": r2, "target": factor, "verdicts": {"first_byte": v1, "exit": v2}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-r", "--repeat", type=int, default=15, help="repetitions, interleaved (default 15)")
    ap.add_argument("--pyvmm", default=default_pyvmm(),
                    help="pyvmm executable (default: the console script beside this interpreter, else PATH)")
    ap.add_argument("--lkvm", help="kvmtool's lkvm (e.g. /work/shared/tools/x86_64/lkvm); skipped when not given")
    ap.add_argument("--qemu", help="qemu-system-x86_64; skipped when not given")
    ap.add_argument("--guest", type=Path, default=GUESTS_X86 / "hello.bin",
                    help="hello guest for kvmtool and QEMU (pyvmm boots its bundled one, the same file)")
    ap.add_argument("--memory", type=int, default=64, help="guest RAM in MiB for every VMM (default 64)")
    ap.add_argument("--python-compare", default="/usr/bin/python3",
                    help="another interpreter whose bare start-up is shown for contrast (default /usr/bin/python3)")
    ap.add_argument("--json", metavar="FILE", help="also write the summary to FILE as JSON")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    if not args.guest.is_file():
        ap.error(f"guest {args.guest} not found (build it with `make -C guest-kernels`)")

    pyvmm = resolve_tool(args.pyvmm, "pyvmm")
    if pyvmm is None:
        return 1
    lkvm = resolve_tool(args.lkvm, "kvmtool comparison (--lkvm)")
    qemu = resolve_tool(args.qemu, "QEMU comparison (--qemu)")
    mem = f"{args.memory}M"
    info_before = machine_info()

    with tempfile.TemporaryDirectory(prefix="pyvmm-bench-") as tmp:
        contenders = [Contender("pyvmm", [pyvmm, "run", "--no-stdin", "-m", mem], 0)]
        if lkvm:
            contenders.append(Contender("kvmtool", [lkvm, "run", "-k", str(args.guest), "-m", str(args.memory),
                                                    "-c", "1", "--console", "serial"], 0))
        if qemu:
            contenders.append(Contender("qemu-microvm", [
                qemu, "-M", "microvm", "-cpu", "host,-arch-capabilities", "-enable-kvm", "-m", str(args.memory),
                "-nographic", "-nodefaults", "-serial", "stdio", "-no-reboot",
                "-bios", str(qemu_bios(Path(tmp))),
                "-device", f"loader,file={args.guest},addr=0x10000,force-raw=on",
                "-device", "isa-debug-exit,iobase=0x500"], 1))
        contenders += [Contender("pyvmm --help", [pyvmm, "--help"], 0, boots=False),
                       Contender("pyvmm probe", [pyvmm, "probe"], 0, boots=False)]
        print(f"start-up: hello guest, {args.repeat} interleaved repetitions, {mem} RAM each")
        print(machine_note())
        bytecode = ensure_bytecode(pyvmm, [c.cmd for c in contenders if c.cmd[0] == pyvmm])
        print(bytecode)
        for c in contenders:
            print(f"  {c.name}: {' '.join(c.cmd)}")
        for c in contenders:  # one warm-up each, so page cache state is alike for all
            measure(c)
        runs: dict[str, list[Run]] = {c.name: [] for c in contenders}
        for rep in range(args.repeat):
            k = rep % len(contenders)
            for c in contenders[k:] + contenders[:k]:
                runs[c.name].append(measure(c))

    print(machine_note())
    vmms = [c.name for c in contenders if c.boots]
    clis = [c.name for c in contenders if not c.boots]
    first = {name: Summary.of([r.first_byte for r in runs[name] if r.first_byte is not None]) for name in vmms}
    done = {name: Summary.of([r.exit for r in rs]) for name, rs in runs.items()}
    rows = []
    for name in vmms:
        f, d = first[name], done[name]
        rows.append([name, f"{f.median * 1e3:.1f}", f"{f.low * 1e3:.1f}-{f.high * 1e3:.1f}",
                     f"{d.median * 1e3:.1f}", f"{d.low * 1e3:.1f}-{d.high * 1e3:.1f}",
                     f"{(d.median - f.median) * 1e3:.1f}"])
    print()
    print(table(rows, ["VMM", "first byte ms", "min-max", "exit ms", "min-max", "first->exit ms"]))
    print()
    summary: dict[str, object] = {
        "benchmark": "startup", "repeat": args.repeat, "memory_mib": args.memory, "machine": info_before,
        "bytecode": bytecode, "editable": bool(pyvmm_install(pyvmm).get("editable")),
        "vmms": {name: {"cmd": next(c.cmd for c in contenders if c.name == name), "unit": "ms",
                        "first_byte": first[name].scaled(1e3), "exit": done[name].scaled(1e3)} for name in vmms},
        "ratios": {},
    }
    ratios: dict[str, object] = summary["ratios"]  # type: ignore[assignment]
    if "qemu-microvm" in runs:
        ratios["qemu-microvm"] = ratio_line("qemu-microvm", first, done, QEMU_FACTOR)
        print("  (the goal beyond the target: below QEMU microvm, i.e. < 1x)")
    else:
        print(f"pyvmm/qemu-microvm: not measured (target <= {QEMU_FACTOR:g}x)")
    if "kvmtool" in runs:
        ratios["kvmtool"] = ratio_line("kvmtool", first, done, KVMTOOL_FACTOR)
    else:
        print(f"pyvmm/kvmtool: not measured (reference, <= {KVMTOOL_FACTOR:g}x)")

    rows, cli = [], {}
    for name in clis:
        d = done[name]
        v = verdict(d.median * 1e3, CLI_MS - 1e-9)
        cli[name] = {"unit": "ms", **d.scaled(1e3), "target_ms": CLI_MS, "verdict": v}
        rows.append([name, f"{d.median * 1e3:.1f}", f"{d.low * 1e3:.1f}-{d.high * 1e3:.1f}", f"< {CLI_MS:g}", v])
    print()
    print(table(rows, ["command (whole process)", "median ms", "min-max", "target ms", "verdict"]))
    summary["cli"] = cli

    python = script_interpreter(pyvmm)
    print()
    if python is None:
        print(f"python running pyvmm: unknown ({pyvmm} has no python shebang); interpreter figures skipped")
        write_json(args.json, summary | {"loadavg_after": list(os.getloadavg())})
        return 0
    info = subprocess.run([python, "-c", "import sys; print(sys.executable, sys.version.split()[0])"],
                          capture_output=True, text=True, timeout=30).stdout.strip()
    print(f"python running pyvmm: {info}")
    reps = max(5, args.repeat)
    interpreters = [python] + ([args.python_compare] if args.python_compare and os.access(args.python_compare, os.X_OK)
                               and os.path.realpath(args.python_compare) != os.path.realpath(python) else [])
    rows = []
    for interp in interpreters:
        for flags in ([], ["-S"], ["-I", "-S"]):
            s = bare_startup(interp, flags, reps)
            rows.append([f"{interp} {' '.join(flags)} -c pass".replace("  ", " "), f"{s.median * 1e3:.1f}",
                         f"{s.low * 1e3:.1f}-{s.high * 1e3:.1f}"])
    print(table(rows, ["bare interpreter start-up", "median ms", "min-max"]))
    imports = import_times(python, pyvmm, mem)
    print(f"\n`{Path(python).name} -X importtime {pyvmm} run --no-stdin -m {mem}`: top 10 by cumulative time, "
          f"min of 3 runs (all imports: {sum(own for _, own, _ in imports) / 1e3:.1f} ms self time in total)")
    rows = [[name, f"{cum}", f"{own}"] for cum, own, name in imports[:10]]
    print(table(rows, ["module (indent = nesting)", "cumulative us", "self us"]))
    print("\ntop 10 by self time (the module's own top-level code)")
    rows = [[name.strip(), f"{own}", f"{cum}"] for cum, own, name in sorted(imports, key=lambda r: -r[1])[:10]]
    print(table(rows, ["module", "self us", "cumulative us"]))
    summary["imports_self_ms"] = sum(own for _, own, _ in imports) / 1e3
    summary["imports_top"] = [{"module": name.strip(), "cumulative_us": cum, "self_us": own}
                              for cum, own, name in imports[:10]]
    if note := editable_note(pyvmm):
        finder = [cum for cum, _, name in imports if name.strip().startswith("__editable__")]
        print(f"\n{note}" + (f" (here: {finder[0] / 1e3:.1f} ms in -X importtime)" if finder else ""))
        summary["editable_finder_ms"] = finder[0] / 1e3 if finder else None
    write_json(args.json, summary | {"loadavg_after": list(os.getloadavg())})
    return 0


if __name__ == "__main__":
    sys.exit(main())
