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
    # The link is still down: the TAP refuses a frame (EIO), which the device drops and counts, as a dead wire.
    mem.write(DATA, bytes(12 + 60))
    d.add(n.TX, [(DATA, 12 + 60)], [])
    device.notify(n.TX)
    assert (device.tx_dropped, device.tx_frames) == (1, 0) and d.used(n.TX)
    # A fresh link also sends IPv6 multicast (MLD, router solicitations): turn IPv6 off so that frames on the
    # receive queue are ours, and still skip anything that is not the ARP reply (busy CI machines reorder things).
    with open("/proc/sys/net/ipv6/conf/vtap0/disable_ipv6", "w") as knob:
        knob.write("1")
    for cmd in ("ip link set vtap0 up", "ip addr add 10.9.0.1/24 dev vtap0"):
        subprocess.run(cmd.split(), check=True)
    mac = bytes.fromhex("525400000002")
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, bytes([10, 9, 0, 2]), bytes(6), bytes([10, 9, 0, 1]))
    frame = bytes(12) + b"\\xff" * 6 + mac + b"\\x08\\x06" + arp
    mem.write(DATA, frame)
    RX_SLOTS = 8
    rx = [DATA + 0x4000 + i * 0x800 for i in range(RX_SLOTS)]  # header and frame in separate buffers
    posted = seen = 0
    reply = None
    deadline = time.monotonic() + 45
    while reply is None and time.monotonic() < deadline:
        if posted - seen < RX_SLOTS // 2:  # keep receive buffers available, as a driver refills its ring
            for _ in range(RX_SLOTS // 2):
                slot = rx[posted % RX_SLOTS]
                d.add(n.RX, [], [(slot, 12), (slot + 12, 0x800 - 12)])
                posted += 1
            device.notify(n.RX)
        d.add(n.TX, [(DATA, len(frame))], [])  # (re)send the request: ARP, like a real stack, retries
        device.notify(n.TX)
        time.sleep(0.2)
        device._receive()
        used = d.used(n.RX)
        for head, length in used[seen:]:
            slot = rx[seen % RX_SLOTS]
            seen += 1
            got = mem.read(slot + 12, length - 12)
            if got[12:14] == b"\\x08\\x06" and struct.unpack("!H", got[20:22])[0] == 2:
                assert mem.read_int(slot + 10, 2) == 1  # num_buffers
                reply = got
    assert reply is not None, f"no ARP reply in 45 s ({seen} other frames received)"
    assert d.used(n.TX)
    assert reply[:6] == mac and reply[28:32] == bytes([10, 9, 0, 1]), reply[:32].hex()  # a reply from .1
    assert irq.triggers >= 2
    assert device.tx_dropped == 1 and device.tx_frames >= 1 and device.tx_bytes == device.tx_frames * (len(frame) - 12)
    assert device.rx_frames == seen and device.rx_bytes >= len(reply)
    assert "dropped by the TAP" in device.activity()
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
