"""virtio-net on a real TAP device, inside a private network namespace (`unshare -n`, root only): the model driver
sends an ARP request through the transmit queue and receives the host kernel's ARP reply on the receive queue."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT, kvm_usable

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None
                                or not os.path.exists("/dev/net/tun"),
                                reason="needs root, unshare, ip and /dev/net/tun")

ARP_ROUND_TRIP = textwrap.dedent("""
    import struct, subprocess, time
    from tests.unit.test_virtio_queue import DATA, make
    from pyvmm.devices.virtio import net as n
    from pyvmm.devices.virtio.config import NetConfig

    device = n.Net(NetConfig(tap="vtap0", mac="52:54:00:00:00:02"))
    t, d, mem, irq, _ = make(device)
    assert d.start()
    assert t.negotiated(n.F_GUEST_TSO4) and t.negotiated(n.F_MAC)  # offloads accepted, TUNSETOFFLOAD applied
    assert t.read(0x100, 4) == 0x00005452 and t.read(0x104, 2) == 0x0200
    for cmd in ("ip link set vtap0 up", "ip addr add 10.9.0.1/24 dev vtap0"):
        subprocess.run(cmd.split(), check=True)
    rx = DATA + 0x4000
    d.add(n.RX, [], [(rx, 12), (rx + 12, 2036)])  # header and frame in separate buffers
    device.notify(n.RX)
    mac = bytes.fromhex("525400000002")
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, bytes([10, 9, 0, 2]), bytes(6), bytes([10, 9, 0, 1]))
    frame = bytes(12) + b"\\xff" * 6 + mac + b"\\x08\\x06" + arp
    mem.write(DATA, frame)
    d.add(n.TX, [(DATA, len(frame))], [])
    device.notify(n.TX)
    assert d.used(n.TX)
    deadline = time.monotonic() + 10
    while not d.used(n.RX) and time.monotonic() < deadline:
        time.sleep(0.05)
        device._receive()
    (head, length), = d.used(n.RX)
    reply = mem.read(rx + 12, length - 12)
    assert mem.read_int(rx + 10, 2) == 1  # num_buffers
    assert reply[:6] == mac and reply[12:14] == b"\\x08\\x06", reply[:20].hex()
    assert struct.unpack("!H", reply[20:22])[0] == 2 and reply[28:32] == bytes([10, 9, 0, 1])  # a reply from .1
    assert irq.triggers >= 2
    device.close()
    t.close()
    print("arp-reply-received")
""")


def test_tx_and_rx_through_a_tap_in_a_private_namespace():
    result = subprocess.run(["unshare", "-n", sys.executable, "-c", ARP_ROUND_TRIP], capture_output=True,
                            timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr.decode()
    assert b"arp-reply-received" in result.stdout


DROP_CAPS_AND_RUN = textwrap.dedent("""
    import ctypes, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    # PR_CAPBSET_DROP CAP_NET_ADMIN: root keeps everything else, but its next exec gets no CAP_NET_ADMIN
    if libc.prctl(24, 12, 0, 0, 0) != 0:
        sys.exit("prctl(PR_CAPBSET_DROP) failed")
    os.execv(sys.executable, [sys.executable, "-m", "pyvmm", "run", "--no-stdin", "--net", "tap=pyvmmnoperm"])
""")


@pytest.mark.skipif(kvm_usable() is not None, reason="needs /dev/kvm")
def test_net_without_cap_net_admin_is_a_clear_error():
    result = subprocess.run(["unshare", "-n", sys.executable, "-c", DROP_CAPS_AND_RUN], capture_output=True,
                            timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL)
    err = result.stderr.decode()
    assert result.returncode == 77, err
    assert err.strip().splitlines() == [
        "pyvmm: error: --net tap=pyvmmnoperm: creating or attaching a TAP device needs CAP_NET_ADMIN (run as root, "
        "or create it for your user first: ip tuntap add pyvmmnoperm mode tap vnet_hdr user $USER)"]
