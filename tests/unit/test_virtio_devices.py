"""virtio-blk, virtio-rng, virtio-console and the device worker, driven through the transport by a model driver."""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import sys
import time

import pytest

from pyvmm.spec import VmSpec
from pyvmm.devices.virtio import blk as b
from pyvmm.devices.virtio import constants as v
from pyvmm.devices.virtio.config import (
    DiskConfig, NetConfig, VsockConfig, parse_disk, parse_net, parse_vsock, validate_devices,
)
from pyvmm.devices.virtio.console import Console
from pyvmm.devices.virtio.rng import Rng
from pyvmm.devices.virtio.worker import DeviceWorker
from pyvmm.errors import HostResourceError, MissingFileError, UsageError
from tests.unit.test_virtio_queue import DATA, make

HDR = DATA
BUF = DATA + 0x1000
STATUS = DATA + 0x100


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(range(256)) * 64)  # 16 KiB = 32 sectors
    return path


def blk_request(d, mem, kind, sector, out=b"", in_len=0):
    mem.write(HDR, struct.pack("<IIQ", kind, 0, sector))
    readable = [(HDR, 16)]
    if out:
        mem.write(BUF, out)
        readable.append((BUF, len(out)))
    writable = ([(BUF, in_len)] if in_len else []) + [(STATUS, 1)]
    return submit(d, mem, readable, writable)


def submit(d, mem, readable, writable):
    """Queue one blk chain, kick, return (the status byte at STATUS, the bytes the device reported)."""
    mem.write_int(STATUS, 1, 0xEE)
    head = d.add(0, readable, writable)
    d.t.device.notify(0)
    used = d.used(0)[-1]
    assert used[0] == head
    return mem.read_int(STATUS, 1), used[1]


def started_blk(config):
    device = b.Block(config)
    t, d, mem, irq, _ = make(device)
    assert d.start()
    return device, t, d, mem


def test_blk_reads_writes_flushes_and_reports_its_id(image):
    device, t, d, mem = started_blk(DiskConfig(image, serial="pyvmm-serial-1"))
    assert t.read(v.MMIO_CONFIG, 8) == 32  # capacity in sectors
    status, written = blk_request(d, mem, b.T_IN, 1, in_len=512)
    assert status == b.S_OK and written == 513 and mem.read(BUF, 512) == (bytes(range(256)) * 2)
    status, _ = blk_request(d, mem, b.T_OUT, 2, out=b"\xab" * 1024)
    assert status == b.S_OK
    assert blk_request(d, mem, b.T_FLUSH, 0)[0] == b.S_OK
    assert image.read_bytes()[1024:2048] == b"\xab" * 1024
    status, written = blk_request(d, mem, b.T_GET_ID, 0, in_len=20)
    assert status == b.S_OK and mem.read(BUF, 20) == b"pyvmm-serial-1".ljust(20, b"\0")
    assert blk_request(d, mem, 99, 0)[0] == b.S_UNSUPP
    device.close()
    t.close()


def test_blk_refuses_requests_past_the_end(image):
    device, t, d, mem = started_blk(DiskConfig(image))
    assert blk_request(d, mem, b.T_IN, 32, in_len=512)[0] == b.S_IOERR
    assert blk_request(d, mem, b.T_OUT, 31, out=b"x" * 1024)[0] == b.S_IOERR
    assert blk_request(d, mem, b.T_IN, 2**63, in_len=512)[0] == b.S_IOERR
    device.close()
    t.close()


def test_read_only_disk_refuses_writes_and_stays_byte_identical(image):
    before = hashlib.sha256(image.read_bytes()).hexdigest()
    device, t, d, mem = started_blk(DiskConfig(image, read_only=True))
    assert d.device_features() >> b.F_RO & 1
    assert blk_request(d, mem, b.T_OUT, 0, out=b"\xff" * 512)[0] == b.S_IOERR
    seg = struct.pack("<QII", 0, 8, 0)
    assert blk_request(d, mem, b.T_WRITE_ZEROES, 0, out=seg)[0] == b.S_IOERR
    assert blk_request(d, mem, b.T_DISCARD, 0, out=seg)[0] == b.S_IOERR
    assert blk_request(d, mem, b.T_IN, 0, in_len=512)[0] == b.S_OK
    device.close()
    t.close()
    assert hashlib.sha256(image.read_bytes()).hexdigest() == before


def test_write_zeroes_and_discard_clear_sectors(image):
    device, t, d, mem = started_blk(DiskConfig(image))
    seg = struct.pack("<QII", 4, 2, 0)
    assert blk_request(d, mem, b.T_WRITE_ZEROES, 0, out=seg)[0] == b.S_OK
    assert image.read_bytes()[4 * 512 : 6 * 512] == bytes(1024)
    status = blk_request(d, mem, b.T_DISCARD, 0, out=struct.pack("<QII", 8, 8, 0))[0]
    if device.can_discard:
        assert status == b.S_OK and image.read_bytes()[8 * 512 : 16 * 512] == bytes(4096)
    else:
        assert status == b.S_UNSUPP
    device.close()
    t.close()


def test_a_request_without_status_byte_stops_the_device(image):
    device, t, d, mem = started_blk(DiskConfig(image))
    mem.write(HDR, struct.pack("<IIQ", b.T_IN, 0, 0))
    d.add(0, [(HDR, 16)], [])
    t.notify(0)
    assert t.read(v.MMIO_STATUS, 4) & v.STATUS_DEVICE_NEEDS_RESET
    device.close()
    t.close()


def test_a_locked_disk_gets_a_clear_error(image):
    first = b.Block(DiskConfig(image))
    with pytest.raises(HostResourceError, match="in use by another process"):
        b.Block(DiskConfig(image))
    first.close()
    b.Block(DiskConfig(image)).close()  # the lock went with the first device


def test_the_lock_holds_across_processes(image):
    holder = b.Block(DiskConfig(image))
    code = ("import sys\nfrom pathlib import Path\nfrom pyvmm.devices.virtio.blk import Block\n"
            "from pyvmm.devices.virtio.config import DiskConfig\nfrom pyvmm.errors import HostResourceError\n"
            f"try:\n    Block(DiskConfig(Path({str(image)!r})))\nexcept HostResourceError as e:\n"
            "    print(e); sys.exit(3)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    holder.close()
    assert result.returncode == 3, result.stderr
    assert b"in use by another process" in result.stdout


def test_disk_errors_are_one_line(tmp_path):
    with pytest.raises(MissingFileError, match="does not exist"):
        b.Block(DiskConfig(tmp_path / "nope.img"))
    with pytest.raises(MissingFileError, match="directory"):
        b.Block(DiskConfig(tmp_path))
    small = tmp_path / "small.img"
    small.write_bytes(b"x" * 100)
    with pytest.raises(MissingFileError, match="smaller than one 512-byte sector"):
        b.Block(DiskConfig(small))


def test_rng_fills_the_buffer_from_getrandom():
    t, d, mem, irq, device = make(Rng())
    assert d.start()
    d.add(0, [], [(BUF, 64), (BUF + 100, 64)])
    device.notify(0)
    assert d.used(0)[0][1] == 128
    assert mem.read(BUF, 64) != bytes(64) and mem.read(BUF + 100, 64) != bytes(64)
    t.close()


def test_console_output_and_input():
    out: list[bytes] = []
    console = Console(out.append)
    t, d, mem, irq, _ = make(console)
    assert d.start()
    mem.write(BUF, b"hvc0 says hi\n")
    d.add(1, [(BUF, 13)], [])
    console.notify(1)
    assert out == [b"hvc0 says hi\n"]
    console.feed(b"typed")
    d.add(0, [], [(BUF + 0x100, 3)])
    console.notify(0)
    assert d.used(0)[0][1] == 3 and mem.read(BUF + 0x100, 3) == b"typ"
    d.add(0, [], [(BUF + 0x200, 16)])
    console.notify(0)
    assert d.used(0)[1][1] == 2 and mem.read(BUF + 0x200, 2) == b"ed"
    console.close()
    t.close()


def test_the_worker_serves_notifications_from_the_eventfd_on_its_own_thread():
    t, d, mem, irq, device = make(Rng())
    assert d.start()
    worker = DeviceWorker("rng-test")
    t.serve_on(worker)
    worker.start()
    try:
        d.add(0, [], [(BUF, 32)])
        t.write(v.MMIO_QUEUE_NOTIFY, 4, 0)  # what KVM_IOEVENTFD does in the kernel
        deadline = time.monotonic() + 5
        while not d.used(0) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert d.used(0)[0][1] == 32
        assert t.read(v.MMIO_INTERRUPT_STATUS, 4) == v.INT_USED_BUFFER
    finally:
        worker.close()
        t.close()


def test_an_eventfd_watch_calls_back_once_per_round_of_writes_and_never_reads_the_counter():
    """Queue kicks and resamples are watched edge-triggered without a read per wake-up: the kernel makes every
    eventfd write an edge, also while the counter is already non-zero, so no kick is lost and none is doubled."""
    worker = DeviceWorker("edge-test")
    fd = os.eventfd(0, os.EFD_NONBLOCK)
    calls: list[int] = []
    worker.watch(fd, lambda: calls.append(1), eventfd=True)
    try:
        worker.turn(0)
        assert calls == []
        os.eventfd_write(fd, 1)
        worker.turn(0)
        worker.turn(0)
        assert calls == [1]  # the counter stays readable, yet one write is one call
        os.eventfd_write(fd, 1)
        os.eventfd_write(fd, 1)
        worker.turn(0)
        worker.turn(0)
        assert calls == [1, 1]  # two writes before the turn: one call, which finds everything they made available
        assert os.eventfd_read(fd) == 3  # never read by the worker
        os.eventfd_write(fd, 1)
        worker.turn(0)
        assert calls == [1, 1, 1]
    finally:
        worker.close()
        os.close(fd)


# -- options ---------------------------------------------------------------------------------------------------
def test_disk_and_net_options_parse():
    disk = parse_disk("/tmp/a.img,ro,serial=abc,cache=unsafe")
    assert (str(disk.path), disk.read_only, disk.serial, disk.cache) == ("/tmp/a.img", True, "abc", "unsafe")
    assert parse_disk("b.img").cache == "writeback"
    net = parse_net("tap=tap0,mac=52:54:00:12:34:56")
    assert (net.tap, net.mac) == ("tap0", "52:54:00:12:34:56")
    with pytest.raises(UsageError, match="unknown setting"):
        parse_disk("a.img,bogus")
    with pytest.raises(UsageError, match="tap=NAME"):
        parse_net("user")
    assert parse_vsock("cid=42") == VsockConfig(42)
    with pytest.raises(UsageError, match="cid=N"):
        parse_vsock("port=3")


@pytest.mark.parametrize("devices,message", [
    ([DiskConfig(path=__import__("pathlib").Path("a.img"), cache="none")], "cache=none"),
    ([DiskConfig(path=__import__("pathlib").Path("a.img"), serial="x" * 21)], "20 bytes"),
    ([NetConfig(tap="this-name-is-too-long")], "interface name"),
    ([NetConfig(tap="tap0", mac="01:00:00:00:00:01")], "multicast"),
    ([VsockConfig(2)], "reserved"),
    ([VsockConfig(3), VsockConfig(4)], "only one virtio-vsock"),
])
def test_device_validation_rejects_with_one_line(devices, message):
    with pytest.raises(UsageError, match=message):
        validate_devices(devices)
    with pytest.raises(UsageError, match=message):
        VmSpec(devices=devices).validate()


def test_a_disk_given_twice_by_any_name_is_one_line(tmp_path):
    image = tmp_path / "a.img"
    image.write_bytes(bytes(4096))
    os.link(image, tmp_path / "b.img")
    for second in (image, tmp_path / "b.img", tmp_path / "." / "a.img"):
        with pytest.raises(UsageError, match=f"--disk {second} is given twice \\(also as {image}\\)"):
            VmSpec(devices=[DiskConfig(path=image), DiskConfig(path=second)]).validate()


def test_pyvmm_run_rejects_a_bad_disk_option():
    result = subprocess.run([sys.executable, "-m", "pyvmm", "run", "--no-stdin", "--disk", "x.img,cache=none"],
                            capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 64
    assert result.stderr.decode().strip().splitlines() == [
        "pyvmm: error: --disk x.img: cache=none is not one of writeback, writethrough, unsafe"]


def test_pyvmm_run_reports_a_missing_disk():
    result = subprocess.run([sys.executable, "-m", "pyvmm", "run", "--no-stdin", "--disk", "/no/such.img"],
                            capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    if os.path.exists("/dev/kvm"):
        assert result.returncode == 66, result.stderr
        assert b"--disk /no/such.img does not exist" in result.stderr


@pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="needs /dev/kvm")
def test_a_vm_with_virtio_devices_builds_runs_and_tears_down(tmp_path):
    image = tmp_path / "d.img"
    image.write_bytes(bytes(1 << 20))
    result = subprocess.run([sys.executable, "-m", "pyvmm", "run", "--no-stdin", "--debug", "--disk", str(image),
                             "--rng", "--console", "virtio"], capture_output=True, timeout=60,
                            stdin=subprocess.DEVNULL)
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert result.stdout == b"Hello from the pyvmm x86_64 guest\n"
    assert "blk0: virtio-mmio at 0xd0000000, irq 16 via" in err
    assert "rng: virtio-mmio at 0xd0000200, irq 17" in err and "console: virtio-mmio at 0xd0000400" in err


@pytest.mark.skipif(not os.path.exists("/dev/kvm") or os.path.exists("/dev/vhost-vsock"),
                    reason="needs /dev/kvm and a host without /dev/vhost-vsock")
def test_vsock_without_vhost_is_a_clear_error():
    result = subprocess.run([sys.executable, "-m", "pyvmm", "run", "--no-stdin", "--vsock", "cid=5"],
                            capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 71
    assert result.stderr.decode().strip().splitlines() == [
        "pyvmm: error: --vsock: /dev/vhost-vsock does not exist (load vhost_vsock: modprobe vhost_vsock)"]
