"""The arm64 lane: build an emulated arm64 host (L1) with pyvmm's checkout in its initramfs and run
`pytest tests/arm64` inside it under qemu-system-aarch64 (TCG, virtualization=on, so /dev/kvm is real arm64 KVM).
Usage and caching: tests/arm64/README.md."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import build
import debs
from util import LaneError, log

USAGE = """usage: tests/arm64/lane [--host-kernel stock|PATH] [--cache DIR] [--timeout SEC] [--append ARG]...
                        [--refresh] [--ship PATH]... [--run CMD] [-k EXPR] [pytest args...] [-- pytest args...]

  --host-kernel stock|PATH  L1 kernel: Debian's linux-image-6.12-arm64 (default) or an arm64 Image file
  --cache DIR               cache directory (default ${PYVMM_LANE_CACHE:-$HOME/.cache/pyvmm-lane})
  --timeout SEC             overall bound on the emulated host's run (default 1200)
  --append ARG              extra L1 kernel command-line argument (repeatable), e.g. kvm-arm.wfi_trap_policy=notrap
  --refresh                 re-resolve and re-download the Python wheels
  --ship PATH               copy a file or folder into the emulated host as /lane/ship/<name> (repeatable), e.g. a
                            kvmtool build or the kvm-unit-tests folder
  --run CMD                 run the shell command CMD in /lane/src instead of pytest (benchmarks: see
                            benchmarks/README.md); its exit status is the lane's
  everything else (and all after --) is passed to pytest, e.g. -k EXPR, -x, tests/arm64/test_lane_smoke.py
"""
CHECKOUT = Path(__file__).resolve().parents[3]   # tests/arm64/lane.d/lane.py -> the checkout root
QEMU = ["qemu-system-aarch64", "-M", "virt,virtualization=on,gic-version=3", "-cpu", "max,pauth-impdef=on",
        "-smp", "2", "-m", "2048", "-nographic", "-no-reboot",
        # virt's default NIC wants efi-virtio.rom, which only ipxe-qemu (a Recommends of qemu-system-arm) brings.
        "-nic", "none"]
KEEP_LOGS = 30
NO_KVM = 90  # PYVMM-LANE-RESULT value of init-l1.sh when /dev/kvm is missing
# oops=panic: an oops in the emulated host's own kernel ends it at once (panic=-1 reboots, -no-reboot exits) instead
# of leaving pytest dead and the lane waiting for its timeout.
BASE_APPEND = ["console=ttyAMA0", "panic=-1", "oops=panic", "rdinit=/init", "quiet"]
PRINTK_TIME = re.compile(r"^\[\s*\d+\.\d+\]\s*")  # a kernel message's timestamp, where printk.time is on
HOST_CRASH_RERUNS = 1  # boots after a crash of the emulated host's kernel (a host kernel bug, not a test result)


@dataclass
class Options:
    host_kernel: str = "stock"
    cache: Path = field(default_factory=lambda: Path(os.environ.get("PYVMM_LANE_CACHE")
                                                     or Path.home() / ".cache/pyvmm-lane"))
    timeout: int = 1200
    append: list[str] = field(default_factory=list)
    refresh: bool = False
    pytest_args: list[str] = field(default_factory=list)
    ship: list[Path] = field(default_factory=list)
    run: str = ""


def parse_args(argv: list[str]) -> Options:
    o = Options()
    it = iter(argv)
    for a in it:
        name, eq, val = a.partition("=")
        if a == "--":
            o.pytest_args += list(it)
            break
        if a in ("-h", "--help"):
            print(USAGE, end="")
            sys.exit(0)
        if name in ("--host-kernel", "--cache", "--timeout", "--append", "--ship", "--run"):
            if not eq:
                val = next(it, None)
                if val is None:
                    raise LaneError(f"{name} needs a value")
            if name == "--host-kernel":
                o.host_kernel = val
            elif name == "--cache":
                o.cache = Path(val)
            elif name == "--append":
                o.append += val.split()
            elif name == "--run":
                o.run = val
            elif name == "--ship":
                path = Path(val).resolve()
                if not path.is_file() and not path.is_dir():
                    raise LaneError(f"--ship {val}: no such file or folder")
                o.ship.append(path)
            else:
                try:
                    o.timeout = int(val)
                except ValueError:
                    raise LaneError(f"--timeout wants whole seconds, got {val!r}") from None
                if o.timeout <= 0:
                    raise LaneError("--timeout must be positive")
        elif a == "--refresh":
            o.refresh = True
        else:
            o.pytest_args.append(a)
    return o


def check_image(path: Path) -> None:
    if not path.is_file():
        raise LaneError(f"--host-kernel {path}: no such file")
    with open(path, "rb") as f:
        head = f.read(64)
    if head[56:60] != b"ARM\x64":
        raise LaneError(f"--host-kernel {path}: not an uncompressed arm64 Image (no ARM\\x64 magic at offset 56)")


def concat(parts: list[Path], dest: Path) -> None:
    """Concatenate initramfs segments, each padded to 4 bytes (the kernel needs aligned cpio headers)."""
    with open(dest, "wb") as out:
        for p in parts:
            with open(p, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
            out.write(b"\0" * ((4 - out.tell() % 4) % 4))


@dataclass
class Outcome:
    booted: bool = False
    result: int | None = None
    panic: str = ""
    crash: str = ""  # the emulated host's kernel died: its first oops or panic line, and where (pc) if printed
    summary: list[str] = field(default_factory=list)


def stream(cmd: list[str], logfile: Path) -> tuple[int, Outcome]:
    """Run qemu, copying its console to stdout and logfile, watching for the lane's marker lines."""
    out = Outcome()
    in_summary = False
    with open(logfile, "w") as lf:
        lf.write("$ " + shlex.join(cmd) + "\n")
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").replace("\r", "").rstrip("\n")
            print(line, flush=True)
            lf.write(line + "\n")
            if line.startswith("PYVMM-LANE-L1-INIT"):
                out.booted = True
            elif line.startswith("PYVMM-LANE-RESULT "):
                out.result = int(line.split()[1])
            elif "Kernel panic" in line and not out.panic:
                out.panic = line.strip()
            # The L1 kernel's own messages reach the console as they happen; an L2 guest's come later, in pytest's
            # report, once pytest is done: `crash` only counts when no PYVMM-LANE-RESULT line came.
            message = PRINTK_TIME.sub("", line)
            if message.startswith(("Unable to handle kernel", "Internal error: Oops", "Kernel panic")) and not out.crash:
                out.crash = message.strip()
            elif message.startswith("pc : ") and out.crash and "; pc " not in out.crash:
                out.crash += f"; pc {message[5:].strip()}"
            if "short test summary info" in line:
                # The outer pytest's block comes last; an earlier one is a test's own inner pytest (-rA output).
                in_summary = True
                out.summary = []
            elif in_summary:
                if line.startswith("=") or line.startswith("PYVMM-LANE-RESULT"):
                    in_summary = False
                    if line.startswith("="):
                        out.summary.append(line)
                else:
                    out.summary.append(line)
            elif line.startswith("=") and (" passed" in line or " failed" in line or " skipped" in line
                                           or "no tests ran" in line or " error" in line):
                out.summary.append(line)
        rc = proc.wait()
    return rc, out


def prepare(cache: Path, stock_host: bool, refresh: bool) -> tuple[build.StockKernel, list[Path], build.L2]:
    """The cached initramfs segments (all but the checkout's) and the L2 artifacts."""
    stock = build.stock_kernel(cache)
    parts = [build.rootfs(cache), build.site(cache, CHECKOUT, refresh)]
    if stock_host:
        parts.append(build.l1_modules(cache, stock))
    l2 = build.l2_artifacts(cache, stock)
    parts.append(l2.segment)
    return stock, parts, l2


def main(argv: list[str]) -> int:
    o = parse_args(argv)
    if not (CHECKOUT / "tests" / "arm64").is_dir():
        raise LaneError(f"{CHECKOUT} does not look like the pyvmm checkout (no tests/arm64)")
    if shutil.which("qemu-system-aarch64") is None:
        raise LaneError("qemu-system-aarch64 not found (apt-get install qemu-system-arm)")
    custom = None
    if o.host_kernel != "stock":
        custom = Path(o.host_kernel).resolve()
        check_image(custom)
    cache = o.cache.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()

    debs.use_cache(cache)
    debs.ensure_arm64_apt()
    try:
        stock, parts, l2 = prepare(cache, custom is None, o.refresh)
    except debs.StaleLists as e:
        log(str(e))
        debs.update_lists()
        stock, parts, l2 = prepare(cache, custom is None, o.refresh)

    kind = "custom" if custom else "stock"
    args = ["-v", "-rA", "--color=no", "-p", "no:cacheprovider"]
    if not any(a.startswith("tests/") or a == "tests" for a in o.pytest_args):
        args.append("tests/arm64")  # the default selection, unless paths were given
    args += o.pytest_args
    env_lines = {
        "LANE_HOST_KIND": kind,
        "LANE_PYTEST_ARGS": shlex.join(args),
        "PYVMM_TEST_L2_KERNEL": "/lane/l2/Image",
        "PYVMM_TEST_L2_INITRD": "/lane/l2/initrd.gz",
        "PYVMM_TEST_L2_MODULES": " ".join(l2.modules),
        "PYVMM_LANE_APPEND": " ".join(o.append),
        "LANE_RUN": o.run,
    }
    run_env = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env_lines.items())
    work = cache / "runs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    work.mkdir(parents=True)
    for old in (cache / "runs").iterdir():  # left behind by killed runs
        if time.time() - old.stat().st_mtime > 24 * 3600:
            shutil.rmtree(old, ignore_errors=True)
    try:
        seg, how = build.checkout_segment(CHECKOUT, work, run_env, o.ship)
        parts.append(seg)
        initrd = work / "initrd.img"
        concat(parts, initrd)
        kernel = custom or stock.image
        prep = time.monotonic() - t0
        log(f"L1 kernel: {kind} {kernel}; checkout {CHECKOUT} as {how}; initramfs "
            f"{initrd.stat().st_size / 2**20:.1f} MiB; prepared in {prep:.1f} s")
        cmd = ["timeout", "--kill-after=10", str(o.timeout), *QEMU, "-kernel", str(kernel), "-initrd", str(initrd),
               "-append", " ".join(BASE_APPEND + o.append)]
        crashes: list[str] = []
        for boot in range(1 + HOST_CRASH_RERUNS):
            logfile = cache / "logs" / f"lane-{work.name}-{kind}{f'-boot{boot + 1}' if boot else ''}.log"
            logfile.parent.mkdir(exist_ok=True)
            log(f"booting the emulated arm64 host (timeout {o.timeout} s); console log: {logfile}")
            t1 = time.monotonic()
            rc, out = stream(cmd, logfile)
            if out.result is not None or not out.booted or not out.crash:
                break
            crashes.append(f"{out.crash} (log {logfile})")
            if boot < HOST_CRASH_RERUNS:
                log(f"the emulated host's kernel crashed: {out.crash}. That is a bug of the host kernel, not a result "
                    f"of the tests: booting it again and running them once more")
        for stale in sorted((cache / "logs").glob("lane-*.log"))[:-KEEP_LOGS]:
            stale.unlink(missing_ok=True)
        latest = cache / "logs" / "latest.log"
        latest.unlink(missing_ok=True)
        latest.symlink_to(logfile.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    took = time.monotonic() - t1
    print("=" * 30 + " arm64 lane summary " + "=" * 30, flush=True)
    for line in out.summary:
        print(line)
    print(f"host kernel: {kind} ({kernel}); prepare {prep:.1f} s, emulated run {took:.1f} s, total "
          f"{time.monotonic() - t0:.1f} s; log {logfile}", flush=True)
    for boot, crash in enumerate(crashes, 1):
        print(f"PYVMM-LANE: boot {boot} of this run ended in a crash of the emulated host's kernel: {crash}", flush=True)
    if out.result is not None:
        if out.result == NO_KVM:
            raise LaneError(f"/dev/kvm is missing in the emulated host; see {logfile}", NO_KVM)
        print(f"PYVMM-LANE: {'--run command' if o.run else 'pytest'} exit status {out.result}", flush=True)
        return out.result
    if rc == 124 or rc == 137:
        raise LaneError(f"the emulated host timed out after {o.timeout} s "
                        f"({'pytest was running' if out.booted else 'before its /init ran'}); see {logfile}", 124)
    if not out.booted:
        raise LaneError(f"the emulated host did not reach its /init (qemu status {rc}"
                        f"{'; ' + out.panic if out.panic else ''}); see {logfile}", 21)
    if out.crash:
        raise LaneError(f"the emulated host's kernel crashed {len(crashes)} times in a row (a host kernel bug, not a "
                        f"test result): {out.crash}; see {logfile}", 23)
    raise LaneError(f"the emulated host stopped without a PYVMM-LANE-RESULT line (qemu status {rc}"
                    f"{'; ' + out.panic if out.panic else ''}); see {logfile}", 22)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except LaneError as e:
        print(f"arm64 lane: error: {e}", file=sys.stderr)
        sys.exit(e.status)
    except KeyboardInterrupt:
        print("arm64 lane: interrupted", file=sys.stderr)
        sys.exit(130)
