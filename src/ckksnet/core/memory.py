"""Process memory: peak and current resident set size, and keeping glibc's allocator lean.

At N = 2^16 every ciphertext limb is a 512 KiB array. :func:`tune_allocator` caps the arenas
and lowers the mmap threshold (limbs that do not fit in free heap space are mmapped rather than
growing the heap); :func:`trim` hands free heap pages back after each layer. Measured on
ResNet-20 at the secure preset (mallinfo2 after each step): the resident size after trimming
stayed within 0.45 GiB of the bytes malloc had in use, libraries included, so what it shows
is live data.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
from functools import lru_cache

from ckksnet.errors import InsufficientMemoryError

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8


@lru_cache(maxsize=1)
def _libc():
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return lib if hasattr(lib, "mallopt") and hasattr(lib, "malloc_trim") else None
    except OSError:  # not glibc: nothing to tune
        return None


@lru_cache(maxsize=1)
def tune_allocator(mmap_threshold: int = 256 * 1024, arenas: int = 2) -> bool:
    """Apply the settings above once per process. Returns False where glibc is absent."""
    lib = _libc()
    if lib is None:
        return False
    lib.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
    lib.mallopt(_M_TRIM_THRESHOLD, 64 * 1024 * 1024)
    lib.mallopt(_M_ARENA_MAX, arenas)
    return True


def trim() -> None:
    """Return free heap memory to the system (cheap: milliseconds)."""
    lib = _libc()
    if lib is not None:
        lib.malloc_trim(0)


def peak_rss_gb() -> float:
    """This process's peak resident set size so far, GiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def rss_gb() -> float:
    """This process's resident set size now, GiB (Linux; 0.0 where /proc is absent)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**30
    except OSError:
        return 0.0


# ---------------------------------------------------------------- checking before keys
#: set to 1 to skip :func:`check_memory` (``--skip-memory-check`` on the command line)
SKIP_ENV = "CKKSNET_SKIP_MEMORY_CHECK"


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _cgroup_room() -> float | None:
    """Bytes this process's cgroup may still take (v2 memory.max - memory.current, or v1's limit
    - usage); None without a limit."""
    for limit_file, used_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                  ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                   "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, used = _read(limit_file), _read(used_file)
        if limit is None or limit.strip() == "max":
            continue
        if int(limit) >= 1 << 60:  # v1 writes a huge number for "no limit"
            continue
        return max(int(limit) - int(used or 0), 0)
    return None


def _address_space_room() -> float | None:
    """Bytes of address space RLIMIT_AS still allows this process (limit - VmSize); None if unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    status = _read("/proc/self/status") or ""
    vm = next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmSize:")), 0)
    return max(soft - vm, 0)


def _available() -> float | None:
    meminfo = _read("/proc/meminfo") or ""
    kb = next((int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemAvailable:")), None)
    return None if kb is None else kb * 1024


def memory_room_gib() -> tuple[float | None, str]:
    """(GiB this process can still allocate, which limit says so): the least of RLIMIT_AS's
    room, the cgroup's room and MemAvailable; (None, "") where none is known."""
    rooms = [(r, what) for r, what in ((_address_space_room(), "the process's address-space limit (RLIMIT_AS)"),
                                       (_cgroup_room(), "the container's memory limit (cgroup memory.max)"),
                                       (_available(), "the memory available on this machine (MemAvailable)"))
             if r is not None]
    if not rooms:
        return None, ""
    room, what = min(rooms)
    return room / 2**30, what


def check_memory(needed_gib: float | None, what: str, override: bool = False) -> None:
    """Raise :class:`ckksnet.errors.InsufficientMemoryError` before ``what`` (key generation, a key
    load) if it needs more than this process can allocate (GiB, see :func:`memory_room_gib`);
    OpenFHE would otherwise abort (std::bad_alloc) or the kernel kill the process minutes in.
    ``override`` (or the environment variable CKKSNET_SKIP_MEMORY_CHECK=1) skips the check."""
    if needed_gib is None or override or os.environ.get(SKIP_ENV) == "1":
        return
    room, limit = memory_room_gib()
    if room is not None and needed_gib > room:
        raise InsufficientMemoryError(
            f"{what} needs about {needed_gib:.1f} GiB, but {limit} leaves {room:.1f} GiB: give the process "
            f"more memory, or skip this check with --skip-memory-check (or {SKIP_ENV}=1) if you know better")
