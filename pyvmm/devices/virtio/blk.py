"""virtio-blk (virtio 1.2, 5.2) on a raw image file or block device.

Reads and writes go straight between the file and guest RAM with os.preadv/os.pwritev on memoryviews of guest
memory (no copies). A batch of 4 or more requests taken from the ring is served by a small thread pool (the syscalls
release the GIL), so several requests are in flight at once; smaller ones are served on the worker thread. FLUSH
completes only after fsync returns (cache=writeback); cache=unsafe skips the fsync; cache=writethrough opens the
file O_DSYNC and offers no volatile cache.
The file is locked with flock (shared when read-only, exclusive otherwise), so a second pyvmm cannot open it for
writing. DISCARD punches holes (fallocate) and is offered only when the host file system can; WRITE_ZEROES uses
ZERO_RANGE or hole punching where supported, else writes zeroes.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import stat
import struct
from concurrent.futures import ThreadPoolExecutor

from pyvmm.devices.virtio.config import DiskConfig
from pyvmm.devices.virtio.constants import ID_BLOCK
from pyvmm.devices.virtio.device import VirtioDevice
from pyvmm.devices.virtio.virtqueue import Chain, VirtqueueError, read_from, views, write_to
from pyvmm.errors import HostResourceError, MissingFileError
from pyvmm.kvm.ioctl import ffi, libc
from pyvmm_bindings.constants import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE

log = logging.getLogger(__name__)

SECTOR = 512
F_SEG_MAX = 2
F_RO = 5
F_BLK_SIZE = 6
F_FLUSH = 9
F_DISCARD = 13
F_WRITE_ZEROES = 14

T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES = 0, 1, 4, 8, 11, 13
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2
ID_BYTES = 20
HEADER = struct.Struct("<IIQ")
SEGMENT = struct.Struct("<QII")  # discard / write-zeroes: sector, num_sectors, flags
WZ_UNMAP = 1
QUEUE_SIZE = 256
MAX_DISCARD_SECTORS = (1 << 32) - 1 & ~7
# Segments per DISCARD / WRITE_ZEROES request, advertised as max_discard_seg / max_write_zeroes_seg: the payload a
# request may carry is bounded by this, whatever lengths its descriptors claim.
MAX_SEGMENTS = 1
ZERO_CHUNK = 1 << 20
# A hand-off to the pool costs about as much CPU as a small request's whole path (futures, a condition, a thread
# wake-up): worth it only when several requests can wait on the disk at once, not for dd's one or two (a 1 MiB
# request split at seg_max).
POOL_MIN_BATCH = 4


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with a mode (os.posix_fallocate has none), declared in pyvmm_bindings' cffi module."""
    if libc.fallocate(fd, mode, offset, length) != 0:
        err = ffi.errno
        raise OSError(err, os.strerror(err))


def _supports(fd: int, mode: int, size: int) -> bool:
    """Probe a fallocate mode on a range past the end of the file (KEEP_SIZE: the image does not change)."""
    try:
        fallocate(fd, mode | FALLOC_FL_KEEP_SIZE, size + (1 << 20), SECTOR * 8)
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL, errno.ENODEV):
            log.debug("fallocate probe: %s", err)
        return False
    return True


class Block(VirtioDevice):
    device_id = ID_BLOCK
    queue_sizes = (QUEUE_SIZE,)

    def __init__(self, config: DiskConfig, index: int = 0) -> None:
        super().__init__()
        self.config = config
        self.name = f"blk{index}"
        path = str(config.path)
        flags = os.O_CLOEXEC | (os.O_RDONLY if config.read_only else os.O_RDWR)
        if config.cache == "writethrough":
            flags |= os.O_DSYNC
        try:
            self.fd = os.open(path, flags)
        except FileNotFoundError:
            raise MissingFileError(f"--disk {path} does not exist") from None
        except IsADirectoryError:
            raise MissingFileError(f"--disk {path} is a directory, not an image file") from None
        except PermissionError:
            mode = "reading" if config.read_only else "writing (add ,ro for a read-only disk)"
            raise MissingFileError(f"--disk {path} cannot be opened for {mode}: permission denied") from None
        except OSError as err:
            raise MissingFileError(f"--disk {path} cannot be opened: {err.strerror}") from None
        try:
            self._lock(path)
            info = os.fstat(self.fd)
            if stat.S_ISREG(info.st_mode):
                size = info.st_size
            elif stat.S_ISBLK(info.st_mode):
                size = os.lseek(self.fd, 0, os.SEEK_END)
            else:
                raise MissingFileError(f"--disk {path} is neither a regular file nor a block device")
            if size < SECTOR:
                raise MissingFileError(f"--disk {path} is {size} bytes: smaller than one 512-byte sector")
            self.capacity = size // SECTOR  # a partial last sector is not addressable, as in other VMMs
            self._end = self.capacity * SECTOR
            writable = not config.read_only
            regular = writable and stat.S_ISREG(info.st_mode)
            self.can_discard = regular and _supports(self.fd, FALLOC_FL_PUNCH_HOLE, size)
            self.can_zero_range = regular and _supports(self.fd, FALLOC_FL_ZERO_RANGE, size)
        except BaseException:
            os.close(self.fd)
            raise
        self.read_only = config.read_only
        self.volatile_cache = config.cache in ("writeback", "unsafe")
        features = 1 << F_SEG_MAX | 1 << F_BLK_SIZE
        if config.read_only:
            features |= 1 << F_RO
        else:
            features |= 1 << F_WRITE_ZEROES
            if self.can_discard:
                features |= 1 << F_DISCARD
        if self.volatile_cache:
            features |= 1 << F_FLUSH
        self.features = features
        self.serial = (config.serial or "").encode()[:ID_BYTES]
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"virtio-{self.name}-io")
        self._config = self._build_config()

    def _lock(self, path: str) -> None:
        try:
            fcntl.flock(self.fd, (fcntl.LOCK_SH if self.config.read_only else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HostResourceError(
                f"--disk {path} is in use by another process (it holds the file's lock): a disk image can have one "
                f"writer, or only readers (,ro)") from None

    def _build_config(self) -> bytes:
        config = bytearray(60)
        struct.pack_into("<QII", config, 0, self.capacity, 0, QUEUE_SIZE - 2)  # capacity, size_max, seg_max
        struct.pack_into("<I", config, 20, SECTOR)  # blk_size
        config[32] = 1 if self.volatile_cache else 0  # writeback
        struct.pack_into("<H", config, 34, 1)  # num_queues
        if self.can_discard:
            struct.pack_into("<III", config, 36, MAX_DISCARD_SECTORS, MAX_SEGMENTS, 8)
        struct.pack_into("<II", config, 48, MAX_DISCARD_SECTORS, MAX_SEGMENTS)
        config[56] = 1 if self.can_discard else 0  # write_zeroes_may_unmap
        return bytes(config)

    def config_space(self) -> bytes:
        return self._config

    # -- requests (worker thread) -------------------------------------------------------------------------------
    def serve_batch(self, index: int, chains: list[Chain]) -> list[int]:
        for chain in chains:  # malformed requests stop the device before any I/O of the batch
            readable, writable = chain.readable, chain.writable
            if readable and len(readable[0]) >= HEADER.size and writable and len(writable[-1]):
                continue  # Linux's layout: the header and the status byte each in a buffer of their own
            if chain.readable_len < HEADER.size or chain.writable_len < 1:
                raise VirtqueueError("a block request without its 16-byte header or its status byte")
        if len(chains) < POOL_MIN_BATCH:
            serve = self.serve
            return [serve(index, chain) for chain in chains]
        return list(self._pool.map(self.serve, [index] * len(chains), chains))

    def serve(self, index: int, chain: Chain) -> int:
        """Serve one request; returns the number of bytes written into the chain (data + status)."""
        readable, writable = chain.readable, chain.writable
        header, status_byte = readable[0], writable[-1]
        if len(header) == HEADER.size and len(status_byte) == 1:
            # Linux's layout, the hot path: header | data buffers | status byte, the walk's views as they are.
            kind, _, sector = HEADER.unpack(header)
            data_out = readable[1:]
            data_in = writable[:-1]
            lengths = chain.lengths  # known for long chains (Virtqueue._straight): no len() per buffer then
            if lengths is None:
                out_len = in_len = -1  # summed below, for the one of the two a read or write needs
            else:
                out_len, in_len = lengths[0] - HEADER.size, lengths[1] - 1
        else:  # any other split is legal too (2.7.4: the device must not assume one)
            kind, _, sector = HEADER.unpack(read_from(readable, HEADER.size))
            data_out = views(readable, HEADER.size)
            data_in = views(writable, 0, chain.writable_len - 1)
            status_byte = _status_byte(chain)
            out_len = in_len = -1
        written = 0
        try:
            # Reads and writes here, not in _serve: nearly every request is one, and each call costs.
            if kind == T_IN:
                if in_len < 0:
                    in_len = sum(map(len, data_in))
                status = S_IOERR
                if in_len % SECTOR == 0 and sector * SECTOR + in_len <= self._end:  # _in_range, inline
                    written = os.preadv(self.fd, data_in, sector * SECTOR) if data_in else 0
                    status = S_OK if written == in_len else S_IOERR
            elif kind == T_OUT:
                if out_len < 0:
                    out_len = sum(map(len, data_out))
                status = S_IOERR
                if not self.read_only and out_len % SECTOR == 0 and sector * SECTOR + out_len <= self._end:
                    done = os.pwritev(self.fd, data_out, sector * SECTOR) if data_out else 0
                    status = S_OK if done == out_len else S_IOERR
            else:
                status, written = self._serve(kind, sector, data_in, chain)
        except OSError as err:
            log.debug("%s: request %d at sector %d: %s", self.name, kind, sector, err)
            status = S_IOERR
        status_byte[0] = status
        return written + 1

    def _in_range(self, sector: int, length: int) -> bool:
        return length % SECTOR == 0 and sector * SECTOR + length <= self._end

    def _serve(self, kind: int, sector: int, data_in: list[memoryview], chain: Chain) -> tuple[int, int]:
        """(status, bytes written into the chain before the status byte) of a request other than a read or write."""
        if kind == T_FLUSH:
            if self.config.cache != "unsafe" and not self.config.read_only:
                os.fsync(self.fd)  # before the completion: that is what FLUSH promises the guest
            return S_OK, 0
        data_in_len = sum(map(len, data_in))
        if kind == T_GET_ID:
            ident = self.serial.ljust(ID_BYTES, b"\0")[: min(ID_BYTES, data_in_len)]
            return S_OK, write_to(chain.writable, ident)
        if kind in (T_DISCARD, T_WRITE_ZEROES):
            if self.config.read_only or (kind == T_DISCARD and not self.can_discard):
                return (S_IOERR if self.config.read_only else S_UNSUPP), 0
            # Lengths first: a descriptor may claim all of guest RAM, the request needs MAX_SEGMENTS * 16 bytes.
            length = chain.readable_len - HEADER.size
            if not 0 < length <= MAX_SEGMENTS * SEGMENT.size or length % SEGMENT.size:
                return S_IOERR, 0
            raw = read_from(chain.readable, HEADER.size + length)[HEADER.size:]
            for offset in range(0, len(raw), SEGMENT.size):
                start, count, flags = SEGMENT.unpack_from(raw, offset)
                if not self._in_range(start, count * SECTOR):
                    return S_IOERR, 0
                self._clear(kind, start * SECTOR, count * SECTOR, flags)
            return S_OK, 0
        return S_UNSUPP, 0

    def _clear(self, kind: int, offset: int, length: int, flags: int) -> None:
        if kind == T_DISCARD or (flags & WZ_UNMAP and self.can_discard):
            fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)  # reads back as zeroes
        elif self.can_zero_range:
            fallocate(self.fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length)
        else:
            zeroes = bytes(min(length, ZERO_CHUNK))
            while length:
                step = min(length, len(zeroes))
                os.pwrite(self.fd, zeroes[:step], offset)
                offset += step
                length -= step

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self.fd >= 0:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = -1


def _status_byte(chain: Chain) -> memoryview:
    """The status byte: the last byte of the device-writable part (5.2.6), i.e. of its last non-empty buffer (a
    zero-length descriptor may end the chain). serve_batch made sure there is one."""
    for buffer in reversed(chain.writable):
        if len(buffer):
            return buffer[len(buffer) - 1 :]
    raise VirtqueueError("a block request without its status byte")
