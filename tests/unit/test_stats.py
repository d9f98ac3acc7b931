"""pyvmm.kvm.stats against real recorded stats-fd bytes, synthetic blobs and a live fd."""

from __future__ import annotations

import math
import os
import re
import struct
from pathlib import Path

import pytest
from construct import Array, Int16sl, Int16ul, Int32ul, Int64ul, PaddedString, Struct
from hypothesis import given, settings, strategies as st

from pyvmm.kvm.stats import (
    StatBase, StatsFormatError, StatsReader, StatsSnapshot, StatType, StatUnit,
    deltas, parse_blob, parse_layout, rates, read_whole_fd,
)

DATA = Path(__file__).parent / "data"
X86_VCPU = (DATA / "stats-x86_64-vcpu.bin").read_bytes()
X86_VM = (DATA / "stats-x86_64-vm.bin").read_bytes()


# --- real x86_64 bytes (recorded by data/record_stats.py: guest ran "out 0x10,al; hlt") ------

def test_x86_vcpu_layout_and_id():
    s = parse_blob(X86_VCPU)
    assert re.fullmatch(r"kvm-\d+/vcpu-0", s.id)
    assert s.layout.name_size == 48
    assert len(s.layout.descriptors) == 45
    assert s.layout.data_offset == 2952
    names = s.layout.names()
    for n in ("halt_successful_poll", "halt_wait_ns", "halt_wait_hist", "blocking", "exits",
              "halt_exits", "io_exits", "mmio_exits", "irq_window_exits", "signal_exits"):
        assert n in names


def test_x86_vcpu_recorded_values():
    s = parse_blob(X86_VCPU)
    assert s.raw_value("exits") == 2  # the OUT and the HLT
    assert s.raw_value("halt_exits") == 1
    assert s.raw_value("fpu_reload") == 2
    assert s.raw_value("signal_exits") == 0
    assert s.value("blocking") is False


def test_x86_vcpu_units_and_types():
    s = parse_blob(X86_VCPU)
    d = s.layout.by_name["halt_wait_ns"]
    assert (d.type, d.unit, d.base, d.exponent, d.size) == (
        StatType.CUMULATIVE, StatUnit.SECONDS, StatBase.POW10, -9, 1)
    assert d.natural(1_500_000_000) == pytest.approx(1.5)  # ns -> seconds
    assert d.named_value(1_500_000_000) == 1_500_000_000  # what JSON readers get: ns, as the name says
    assert s.layout.by_name["exits"].named_value(7) == 7
    assert isinstance(s.value("halt_wait_ns"), float)
    b = s.layout.by_name["blocking"]
    assert (b.type, b.unit) == (StatType.INSTANT, StatUnit.BOOLEAN)
    assert s.layout.by_name["guest_mode"].unit is StatUnit.BOOLEAN
    assert isinstance(s.value("exits"), int)


def test_x86_vcpu_log_histogram():
    s = parse_blob(X86_VCPU)
    h = s.histogram("halt_wait_hist")
    assert s.layout.by_name["halt_wait_hist"].type is StatType.LOG_HIST
    assert len(h.counts) == 32 and h.total == 0
    # bucket 0 = 0 ns, bucket i = [2^(i-1), 2^i) ns, last bucket open-ended; in seconds
    assert h.lower[0] == 0 and h.upper[0] == pytest.approx(1e-9)
    assert h.lower[11] == pytest.approx(1024e-9) and h.upper[11] == pytest.approx(2048e-9)
    assert h.upper[-1] == math.inf
    assert s.value("halt_wait_hist") == h


def test_x86_vm_stats():
    s = parse_blob(X86_VM)
    assert re.fullmatch(r"kvm-\d+", s.id)
    assert s.layout.names()[:2] == ["remote_tlb_flush", "remote_tlb_flush_requests"]
    assert len(s.layout.descriptors) == 15
    assert s.raw_value("mmu_cache_miss") == 4
    assert s.layout.by_name["max_mmu_rmap_size"].type is StatType.PEAK
    assert s.layout.by_name["pages_4k"].type is StatType.INSTANT


ARM64_VCPU_NAMES = [
    "halt_successful_poll", "halt_attempted_poll", "halt_poll_invalid", "halt_wakeup",
    "halt_poll_success_ns", "halt_poll_fail_ns", "halt_wait_ns", "halt_poll_success_hist",
    "halt_poll_fail_hist", "halt_wait_hist", "blocking", "hvc_exit_stat", "wfe_exit_stat",
    "wfi_exit_stat", "mmio_exit_user", "mmio_exit_kernel", "signal_exits", "exits",
]


def test_arm64_vcpu_recorded():
    """Recorded in the emulated arm64 host on 6.12.117-wfx (vCPU initialised, never run)."""
    s = parse_blob((DATA / "stats-arm64-vcpu.bin").read_bytes())
    assert re.fullmatch(r"kvm-\d+/vcpu-0", s.id)
    assert s.layout.names() == ARM64_VCPU_NAMES
    assert all(v == 0 for vals in s.raw.values() for v in vals)
    assert s.layout.by_name["wfi_exit_stat"].type is StatType.CUMULATIVE
    assert s.layout.by_name["halt_wait_ns"].unit is StatUnit.SECONDS
    assert s.layout.by_name["halt_wait_ns"].exponent == -9
    assert s.histogram("halt_wait_hist").counts == (0,) * 32
    assert s.value("blocking") is False


def test_arm64_vm_recorded():
    s = parse_blob((DATA / "stats-arm64-vm.bin").read_bytes())
    assert re.fullmatch(r"kvm-\d+", s.id)
    assert s.layout.names() == ["remote_tlb_flush", "remote_tlb_flush_requests"]


# --- malformed input: always StatsFormatError -------------------------------------------------

@pytest.mark.parametrize("blob", [X86_VCPU, X86_VM, (DATA / "stats-arm64-vcpu.bin").read_bytes()],
                         ids=["vcpu", "vm", "arm64-vcpu"])
def test_every_truncation_raises_format_error(blob):
    for n in range(len(blob)):
        with pytest.raises(StatsFormatError):
            parse_blob(blob[:n])


def _patch_header(blob: bytes, index: int, value: int) -> bytes:
    b = bytearray(blob)
    struct.pack_into("<I", b, 4 * index, value)
    return bytes(b)


@pytest.mark.parametrize("index,value,msg", [
    (1, 0, "name_size 0"),
    (1, 1 << 20, "name_size"),
    (2, 1 << 30, "num_desc"),
    (3, 4, "id_offset 4 overlaps"),
    (4, 1 << 30, "descriptors truncated"),
])
def test_bad_header_fields(index, value, msg):
    with pytest.raises(StatsFormatError, match=msg):
        parse_blob(_patch_header(X86_VCPU, index, value))


def test_descriptor_pointing_past_data():
    b = bytearray(X86_VCPU)
    lay = parse_layout(X86_VCPU)
    struct.pack_into("<I", b, lay.desc_offset + 8, 1 << 20)  # first descriptor's offset
    with pytest.raises(StatsFormatError, match="data block truncated"):
        parse_blob(bytes(b))


def test_name_without_nul():
    b = bytearray(X86_VCPU)
    lay = parse_layout(X86_VCPU)
    b[lay.desc_offset + 16 : lay.desc_offset + 16 + 48] = b"x" * 48
    with pytest.raises(StatsFormatError, match="not NUL-terminated"):
        parse_blob(bytes(b))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(X86_VM) - 1), st.integers(0, 255), st.integers(0, len(X86_VM)))
def test_fuzz_never_raises_anything_else(pos, byte, cut):
    b = bytearray(X86_VM)
    b[pos] = byte
    try:
        parse_blob(bytes(b[:cut]))
    except StatsFormatError:
        pass


# --- synthetic multi-arch blob built with construct -------------------------------------------

NS = 32
Header = Struct("flags" / Int32ul, "name_size" / Int32ul, "num_desc" / Int32ul,
                "id_offset" / Int32ul, "desc_offset" / Int32ul, "data_offset" / Int32ul)
Desc = Struct("flags" / Int32ul, "exponent" / Int16sl, "size" / Int16ul, "offset" / Int32ul,
              "bucket_size" / Int32ul, "name" / PaddedString(NS, "ascii"))


def flags(t: int, unit: int = 0, base: int = 0) -> int:
    return t | unit << 4 | base << 8


# name, flags, exponent, values, bucket_size
SYNTH = [
    ("wfi_exit_stat", flags(0), 0, [100], 0),            # arm64 counter
    ("halt_exits", flags(0), 0, [7], 0),                 # x86 counter
    ("halt_wait_ns", flags(0, 2), -9, [2_000_000_000], 0),
    ("poll_us", flags(0, 2), -6, [250], 0),              # odd exponent: microseconds
    ("kilo_things", flags(1, 0), 3, [5], 0),             # instant, pow10 exponent +3
    ("pages_bytes", flags(1, 1, 1), 12, [3], 0),         # bytes in 4 KiB pages: pow2 exponent 12
    ("cycles_peak", flags(2, 3), 0, [99], 0),
    ("flag", flags(1, 4), 0, [1], 0),
    ("lin_hist", flags(3, 2), -9, [1, 2, 3, 4], 500),    # linear, 500 ns buckets
    ("log_hist", flags(4, 2, 1), -10, [5, 0, 1], 0),     # log, pow2 base, exponent -10
    ("future_type", flags(7), 0, [42], 0),               # unknown type code: kept raw
]


def build_blob(ident: str = "kvm-1/vcpu-3", stats=SYNTH) -> bytes:
    id_off = Header.sizeof()
    desc_off = id_off + NS
    data_off = desc_off + len(stats) * (16 + NS)
    descs, data, off = [], [], 0
    for name, fl, exp, vals, bs in stats:
        descs.append(Desc.build(dict(flags=fl, exponent=exp, size=len(vals), offset=off,
                                     bucket_size=bs, name=name)))
        data += vals
        off += 8 * len(vals)
    head = Header.build(dict(flags=0, name_size=NS, num_desc=len(stats), id_offset=id_off,
                             desc_offset=desc_off, data_offset=data_off))
    return (head + PaddedString(NS, "ascii").build(ident) + b"".join(descs)
            + Array(len(data), Int64ul).build(data))


def test_synthetic_values_in_natural_units():
    s = parse_blob(build_blob())
    assert s.id == "kvm-1/vcpu-3"
    assert s.value("wfi_exit_stat") == 100 and s.value("halt_exits") == 7
    assert s.value("halt_wait_ns") == pytest.approx(2.0)
    assert s.value("poll_us") == pytest.approx(250e-6)
    assert s.value("kilo_things") == 5000
    assert s.value("pages_bytes") == 3 * 4096 and isinstance(s.value("pages_bytes"), int)
    assert s.layout.by_name["cycles_peak"].unit is StatUnit.CYCLES
    assert s.value("flag") is True
    assert s.layout.by_name["future_type"].type is None and s.raw_value("future_type") == 42


def test_synthetic_histograms():
    s = parse_blob(build_blob())
    lin = s.histogram("lin_hist")
    assert lin.counts == (1, 2, 3, 4)
    assert lin.lower == pytest.approx((0, 500e-9, 1000e-9, 1500e-9))
    assert lin.upper[:3] == pytest.approx((500e-9, 1000e-9, 1500e-9)) and lin.upper[3] == math.inf
    log = s.histogram("log_hist")
    assert log.counts == (5, 0, 1)
    scale = 2.0 ** -10
    assert log.lower == pytest.approx((0, 1 * scale, 2 * scale))
    assert log.upper[:2] == pytest.approx((1 * scale, 2 * scale)) and log.upper[2] == math.inf
    assert [c for _, _, c in log.buckets()] == [5, 0, 1]


def test_linear_hist_with_zero_bucket_size_rejected():
    with pytest.raises(StatsFormatError, match="bucket_size 0"):
        parse_blob(build_blob(stats=[("h", flags(3), 0, [1, 2], 0)]))


def test_duplicate_names_rejected():
    with pytest.raises(StatsFormatError, match="repeats"):
        parse_blob(build_blob(stats=[("a", 0, 0, [1], 0), ("a", 0, 0, [2], 0)]))


# --- snapshots, rates, deltas -----------------------------------------------------------------

def _snap(blob: bytes, t_ns: int) -> StatsSnapshot:
    return parse_blob(blob, monotonic_ns=t_ns)


def _with(values: dict[str, list[int]]) -> bytes:
    return build_blob(stats=[(n, f, e, values.get(n, v), b) for n, f, e, v, b in SYNTH])


def test_rates_of_cumulative_stats():
    a = _snap(_with({"wfi_exit_stat": [100], "halt_wait_ns": [0]}), 1_000_000_000)
    b = _snap(_with({"wfi_exit_stat": [300], "halt_wait_ns": [1_000_000_000]}), 3_000_000_000)
    r = rates(a, b)
    assert r["wfi_exit_stat"] == pytest.approx(100.0)  # 200 exits in 2 s
    assert r["halt_wait_ns"] == pytest.approx(0.5)  # waited half the time
    assert "kilo_things" not in r and "lin_hist" not in r and "cycles_peak" not in r
    assert rates(a, b, ["halt_exits"]) == {"halt_exits": 0.0}
    with pytest.raises(KeyError, match="lin_hist"):
        rates(a, b, ["lin_hist"])


def test_deltas_include_histograms():
    a = _snap(_with({"lin_hist": [1, 2, 3, 4]}), 0)
    b = _snap(_with({"lin_hist": [1, 5, 3, 6]}), 10)
    assert deltas(a, b)["lin_hist"] == (0, 3, 0, 2)


def test_rates_reject_bad_pairs():
    a = _snap(build_blob(), 10)
    with pytest.raises(ValueError, match="positive"):
        rates(a, _snap(build_blob(), 10))
    with pytest.raises(ValueError, match="different objects"):
        rates(a, _snap(build_blob("kvm-1/vcpu-4"), 20))


# --- readers on fds ---------------------------------------------------------------------------

def test_reader_on_a_file(tmp_path):
    p = tmp_path / "s.bin"
    p.write_bytes(X86_VCPU)
    fd = os.open(p, os.O_RDONLY)
    with StatsReader(fd, owns_fd=True) as r:
        s = r.snapshot()
        assert s.raw == parse_blob(X86_VCPU).raw
        assert s.monotonic_ns > 0 and s.wall_time > 0
        assert read_whole_fd(fd, chunk=100) == X86_VCPU
    assert r.fd == -1


KVM = Path("/dev/kvm")
# The generic vCPU statistics of every kernel with KVM_GET_STATS_FD (virt/kvm/kvm_main.c, KVM_GENERIC_VCPU_STATS).
GENERIC_VCPU_STATS = {"halt_successful_poll", "halt_attempted_poll", "halt_poll_invalid", "halt_wakeup",
                      "halt_poll_success_ns", "halt_poll_fail_ns", "halt_wait_ns", "exits"}
ARCH = {"aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)


@pytest.mark.skipif(not os.access(KVM, os.R_OK | os.W_OK), reason="needs /dev/kvm")
def test_reader_on_a_live_vcpu_fd():
    from pyvmm.kvm.system import Kvm
    from pyvmm.kvm.vcpu import Vcpu
    from pyvmm.kvm.vm import Vm

    kvm = Kvm.open()
    vm = Vm(kvm)
    vcpu = Vcpu(vm, 0)
    try:
        with StatsReader.from_object(vcpu) as r:
            # What every kernel with the stats fd guarantees (kernels differ in the rest: 6.18 builds add
            # pf_parked and pf_park_timeouts, arm64 has wfi_exit_stat): never compare with one build's list.
            names = r.layout.names()
            assert len(names) == len(set(names)), "stat names must be unique"
            assert set(names) >= GENERIC_VCPU_STATS
            a, b = r.snapshot(), r.snapshot()
            assert all(a.value(name) is not None for name in names)  # every descriptor decodes
            assert b.monotonic_ns > a.monotonic_ns
            assert a.raw_value("exits") == 0 and r.layout.id.endswith("/vcpu-0")
            assert set(rates(a, b)) >= {"exits", "halt_wait_ns"}
        with StatsReader.from_object(vm) as r:
            assert "remote_tlb_flush" in r.snapshot()
    finally:
        vcpu.close()
        vm.close()
        kvm.close()
