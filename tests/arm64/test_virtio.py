"""virtio-mmio devices under a real Linux guest (the lane's L2): disks, entropy, hvc0, and a TAP network.

One boot serves the disk/rng/console tests (an L2 boot under TCG-emulated EL2 is the expensive part); the network
test boots its own guest inside a fresh network namespace of the emulated host.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
import sys

import pytest

LINUX_TIMEOUT = 600  # pass/fail only: emulated timings are not performance figures
MIB = 1 << 20
PATTERN_BYTES = 4 * MIB
PATTERN = (b"pyvmm-pattern\n" * (PATTERN_BYTES // 14 + 1))[:PATTERN_BYTES]

GUEST_SCRIPT = """
echo "serial=$(cat /sys/block/vda/serial)"
echo "vdb-ro=$(cat /sys/block/vdb/ro)"
yes pyvmm-pattern | head -c 4194304 > /dev/vda && sync && echo pattern-written
dd if=/dev/zero of=/dev/vdb bs=4096 count=1 conv=fsync 2>/dev/null; echo "ro-write-status=$?"
echo "ro-md5=$(head -c 65536 /dev/vdb | md5sum)"
echo "rng=$(cat /sys/class/misc/hw_random/rng_current)"
echo "hwrng=$(head -c 32 /dev/hwrng | od -An -tx1 | tr -d ' \\n')"
echo hvc-says-hello > /dev/hvc0
dd if=/dev/zero of=/dev/vdc bs=1M count=8 oflag=direct 2>/dev/null && echo direct-write-ok
dd if=/dev/vdc of=/dev/null bs=1M count=8 iflag=direct 2>/dev/null && echo direct-read-ok
grep virtio /proc/interrupts | while read -r line; do echo "irq: $line"; done
"""


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def pyvmm_linux(l2_kernel, l2_initrd, script: str, *args: str, prefix: list[str] | None = None,
                **kwargs) -> subprocess.CompletedProcess:
    # console=ttyS0 names the console explicitly: virtio_mmio is a module in this guest, so hvc0 appears only
    # after /init loaded it, too late to be /dev/console.
    cmdline = f"panic=-1 console=ttyS0 earlycon pyvmm.cmd={b64(script)}"
    return subprocess.run([*(prefix or []), sys.executable, "-m", "pyvmm", "run", "--no-stdin", "-k", str(l2_kernel),
                           "-i", str(l2_initrd), "-m", "512M", "-p", cmdline, *args],
                          capture_output=True, timeout=LINUX_TIMEOUT, stdin=subprocess.DEVNULL, **kwargs)


@pytest.fixture(scope="module")
def disk_boot(tmp_path_factory, request):
    l2_kernel = request.getfixturevalue("l2_kernel")
    l2_initrd = request.getfixturevalue("l2_initrd")
    tmp = tmp_path_factory.mktemp("virtio")
    rw = tmp / "rw.img"
    rw.write_bytes(bytes(8 * MIB))
    ro = tmp / "ro.img"
    ro.write_bytes(os.urandom(MIB))
    ro_digest = hashlib.sha256(ro.read_bytes()).hexdigest()
    direct = tmp / "direct.img"
    direct.write_bytes(bytes(16 * MIB))
    result = pyvmm_linux(l2_kernel, l2_initrd, GUEST_SCRIPT, "--disk", f"{rw},serial=pyvmm-disk-0",
                         "--disk", f"{ro},ro", "--disk", f"{direct},cache=unsafe", "--rng", "--console", "virtio",
                         "--debug")
    out = result.stdout.decode(errors="replace")
    print(out[-4000:])
    print(result.stderr.decode(errors="replace")[-2000:])
    return result, out, rw, ro, ro_digest


def test_guest_runs_with_two_disks_rng_and_console(disk_boot):
    result, out, *_ = disk_boot
    assert "PYVMM-L2-CMD-EXIT 0" in out, out[-3000:]
    assert result.returncode == 0, result.stderr.decode()
    assert "pyvmm-l2: loaded virtio_mmio" in out and "pyvmm-l2: loaded virtio_blk" in out


def test_interrupts_come_through_irqfd_and_reach_the_guest(disk_boot):
    result, out, *_ = disk_boot
    err = result.stderr.decode(errors="replace")
    assert "blk0: virtio-mmio at 0xa000000, irq 16 via KVM_IRQFD (edge)" in err, err[-2000:]
    assert "KVM_IOEVENTFD refused" not in err
    counts = [int(line.split()[2]) for line in out.splitlines() if line.startswith("irq: ")]
    # one line per device (3 disks, rng, console); the console may run its transmit queue without interrupts
    assert len(counts) >= 5 and sum(count > 0 for count in counts) >= 4, out[-3000:]
    # the guest configured the SPIs as the device tree says: edge (an irqfd pulse on a level SPI could be lost)
    assert all(" Edge " in line for line in out.splitlines() if line.startswith("irq: ")), out[-3000:]


def test_register_reads_come_from_the_read_only_page(disk_boot):
    """Linux probed five devices and took an interrupt per request, reading InterruptStatus each time: all from the
    read-only page over the slots, none of those reads exiting (only the ACK writes do)."""
    err = disk_boot[0].stderr.decode(errors="replace")
    devices = ["blk0", "blk1", "blk2", "console", "rng"]
    mirrored = re.search(r"virtio-mmio: register reads of (.*) served from a read-only page at 0xa000000", err)
    assert mirrored is not None and sorted(mirrored.group(1).split(", ")) == devices, err[-3000:]
    exited = re.findall(r"virtio-mmio \((\w+)\): (\d+) register reads exited", err)
    assert sorted(name for name, _ in exited) == devices, err[-3000:]
    assert all(count == "0" for _, count in exited), exited


def test_o_direct_reads_and_writes(disk_boot):
    out = disk_boot[1]
    assert "direct-write-ok" in out and "direct-read-ok" in out, out[-3000:]


def test_pattern_written_by_the_guest_reaches_the_host_file(disk_boot):
    result, out, rw, ro, _ = disk_boot
    assert "pattern-written" in out, out[-3000:]
    expected = hashlib.sha256(PATTERN + bytes(8 * MIB - PATTERN_BYTES)).hexdigest()
    assert hashlib.sha256(rw.read_bytes()).hexdigest() == expected


def test_disk_serial_reaches_the_guest(disk_boot):
    assert "serial=pyvmm-disk-0" in disk_boot[1]


def test_read_only_disk_refuses_the_write_and_stays_byte_identical(disk_boot):
    result, out, rw, ro, ro_digest = disk_boot
    assert "vdb-ro=1" in out
    assert "ro-write-status=0" not in out and "ro-write-status=" in out
    assert f"ro-md5={hashlib.md5(ro.read_bytes()[:65536]).hexdigest()}" in out  # the guest reads the right data
    assert hashlib.sha256(ro.read_bytes()).hexdigest() == ro_digest


def test_guest_reads_entropy_from_hwrng(disk_boot):
    out = disk_boot[1]
    assert "rng=virtio_rng" in out, out[-3000:]
    line = next(l for l in out.splitlines() if l.startswith("hwrng="))
    value = line.removeprefix("hwrng=").strip()
    assert len(value) == 64 and value != "0" * 64


def test_hvc0_output_reaches_stdout(disk_boot):
    assert "hvc-says-hello" in disk_boot[1]


TAP_SETUP = """
import fcntl, struct
fd = open("/dev/net/tun", "r+b", buffering=0)
fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH22x", b"tap0", 0x0002 | 0x1000 | 0x4000))  # TUNSETIFF
fcntl.ioctl(fd, 0x400454CB, 1)  # TUNSETPERSIST: pyvmm attaches to it by name
"""

NET_GUEST = """
ip link set lo up
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0
echo "mac=$(cat /sys/class/net/eth0/address)"
ping -c 3 -W 5 10.0.2.2; echo "guest-ping-status=$?"
# Stay up until the host's echo request has come in (its ping loop runs from the start), at most 120 s: how long
# that takes under emulation decides, not a fixed sleep. InEchos counts the requests received.
echos() { awk '$1 == "Icmp:" { if (!col) { for (i = 2; i <= NF; i++) if ($i == "InEchos") col = i } else print $col }' \
    /proc/net/snmp; }
i=0; while [ "$(echos)" = 0 ] && [ $i -lt 120 ]; do sleep 1; i=$((i + 1)); done
echo "guest-echo-requests=$(echos)"
sleep 3  # the reply's way out
"""


NET_TIMEOUT = 240  # below pytest-timeout's 300 s, so that a hang reports the console instead of nothing


def _unshare_net() -> None:
    import cffi

    ffi = cffi.FFI()
    ffi.cdef("int unshare(int flags);")
    if ffi.dlopen(None).unshare(0x4000_0000) != 0:  # CLONE_NEWNET
        raise OSError(ffi.errno, "unshare(CLONE_NEWNET)")


def test_guest_and_host_ping_each_other_over_a_tap(l2_kernel, l2_initrd, tmp_path):
    if not os.path.exists("/dev/net/tun"):
        pytest.fail("/dev/net/tun is missing in the emulated host (the lane ships the tun module)")
    setup = tmp_path / "tap.py"
    setup.write_text(TAP_SETUP)
    cmdline = f"panic=-1 console=ttyS0 earlycon pyvmm.cmd={b64(NET_GUEST)}"
    pinged = tmp_path / "host-ping-ok"  # a file, not a line: pyvmm writes the guest's console to the same stdout
    # The host pings until a reply comes (each try waits 5 s: emulated latency); the loop is stopped by its pid
    # when pyvmm ends (`kill %1` is not job control in a non-interactive sh), else it would hold the output pipe.
    host = (f"{sys.executable} {setup} && ip link set lo up && ip addr add 10.0.2.2/24 dev tap0 && "
            f"ip link set tap0 up && echo host-tap-ready || exit 9\n"
            f"( for i in $(seq 1 60); do ping -c 1 -W 5 10.0.2.15 >/dev/null 2>&1 && : > {pinged} && break; "
            "sleep 1; done ) &\n"
            "pinger=$!\n"
            f"{sys.executable} -m pyvmm run --no-stdin -k {l2_kernel} -i {l2_initrd} -m 512M "
            f"-p '{cmdline}' --net tap=tap0,mac=52:54:00:aa:bb:cc --debug\n"
            "status=$?; kill $pinger 2>/dev/null; wait; exit $status\n")
    try:
        result = subprocess.run(["sh", "-c", host], capture_output=True, timeout=NET_TIMEOUT,
                                stdin=subprocess.DEVNULL, preexec_fn=_unshare_net)
    except subprocess.TimeoutExpired as stuck:  # fail with what was printed so far, before pytest-timeout's bound
        pytest.fail(f"no exit within {NET_TIMEOUT} s; stdout:\n{(stuck.stdout or b'').decode(errors='replace')[-6000:]}"
                    f"\nstderr:\n{(stuck.stderr or b'').decode(errors='replace')[-3000:]}")
    out = result.stdout.decode(errors="replace")
    print(out[-4000:])
    print(result.stderr.decode(errors="replace")[-2000:])
    assert "host-tap-ready" in out, result.stderr.decode()
    assert "pyvmm-l2: loaded virtio_net" in out
    assert "mac=52:54:00:aa:bb:cc" in out
    assert "guest-ping-status=0" in out, out[-3000:]
    assert pinged.exists(), out[-3000:]  # the host's ping got its reply
    assert not re.search(r"guest-echo-requests=0\b", out), out[-3000:]
    counts = re.search(r"net0: (\d+) frames received \(\d+ bytes\), (\d+) sent", result.stderr.decode())
    assert counts and int(counts[1]) >= 3 and int(counts[2]) >= 3, result.stderr.decode()[-2000:]  # pings each way
    assert result.returncode == 0, result.stderr.decode()


VSOCK_GUEST = """
echo "vsock-dev=$(ls /dev/vsock)"
sleep 30
"""


def test_host_reaches_the_guest_over_vsock(l2_kernel, l2_initrd):
    import errno
    import socket
    import threading
    import time

    if not os.path.exists("/dev/vhost-vsock"):
        pytest.skip("/dev/vhost-vsock is absent in this emulated host: vsock cannot be tested here")
    outcome: dict[str, object] = {}

    def probe() -> None:
        # No guest listens on the port: a working guest transport answers the connection request with a reset
        # (ECONNRESET); without a guest behind the CID vhost answers ENODEV, and a dead transport times out.
        deadline = time.monotonic() + LINUX_TIMEOUT / 2
        while time.monotonic() < deadline and "errno" not in outcome:
            with socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                try:
                    sock.connect((42, 1234))
                    outcome["errno"] = 0
                except OSError as err:
                    if err.errno == errno.ECONNRESET:
                        outcome["errno"] = err.errno
                    outcome["last"] = repr(err)
            time.sleep(1)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    result = pyvmm_linux(l2_kernel, l2_initrd, VSOCK_GUEST, "--vsock", "cid=42", "--debug")
    thread.join(10)
    out = result.stdout.decode(errors="replace")
    print(out[-3000:])
    print(result.stderr.decode(errors="replace")[-2000:])
    assert "vsock-dev=/dev/vsock" in out
    assert result.returncode == 0, result.stderr.decode()
    assert outcome.get("errno") == errno.ECONNRESET, outcome
