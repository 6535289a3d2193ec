"""What a killed PostgreSQL server leaves behind, and its removal: the cluster's processes
(backends are session leaders of their own, so a kill of the trial's group misses them), its
System V segment and the dynamic shared memory segments in /dev/shm that the segment's header
names, and a stale ``postmaster.pid``. The server that made them would have removed them; a
killed one cannot, and the next start or a full /dev/shm would meet them."""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from targets.process import wait_dead

if TYPE_CHECKING:
    from targets.postgres_cluster import Cluster

_IPC_RMID = 0
_SHM_RDONLY = 0o10000
_PG_SHMEM_MAGIC = 679834894  # PGShmemMagic
_DSM_CONTROL_MAGIC = 0x9A503D32  # PG_DYNSHMEM_CONTROL_MAGIC
_DSM_DIR = Path("/dev/shm")  # dynamic_shared_memory_type = posix, Linux's default


def cluster_processes(cluster: Cluster) -> list[psutil.Process]:
    """Processes working in the cluster's data directory (postmaster and backends alike).

    Backends make themselves session leaders, so a kill of the trial's process group ends only
    the postmaster; their working directory is the data directory, whatever title they show.
    """
    if cluster.root.is_symlink() or cluster.pgdata.is_symlink():
        return []
    pgdata = os.path.realpath(cluster.pgdata)
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.pid != os.getpid() and proc.cwd() == pgdata:
                found.append(proc)
    return found


def end_leftovers(cluster: Cluster) -> None:
    """SIGKILL every process of the cluster, drop its unused segment and its postmaster.pid."""
    procs = cluster_processes(cluster)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    wait_dead(procs, timeout=5)
    pid_file = cluster.pgdata / "postmaster.pid"
    try:
        lines = pid_file.read_text(errors="replace").splitlines()
    except OSError:
        return
    if len(lines) >= 7:
        _remove_segment(lines[6])
    pid_file.unlink(missing_ok=True)


def _remove_segment(line: str) -> None:
    """Remove the System V segment ``line`` ("key id" of postmaster.pid) if nothing uses it,
    and the dynamic shared memory segments its header names (the server that made them was
    killed: nobody else would remove them from /dev/shm)."""
    try:
        key, shmid = (int(part) for part in line.split())
    except ValueError:
        return
    for row in _segment_rows(key, shmid):
        cols = row.split()
        if cols[6] == "0":
            libc = ctypes.CDLL(None, use_errno=True)
            control = _dsm_control_handle(libc, shmid)
            if control:
                remove_dsm_segments(control)
            libc.shmctl(ctypes.c_int(shmid), ctypes.c_int(_IPC_RMID), None)


def _segment_rows(key: int, shmid: int, wait_s: float = 2.0) -> list[str]:
    """The System V segment's row of /proc/sysvipc/shm, once nothing is attached to it: the
    processes just killed take a moment to detach (at most ``wait_s``)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            rows = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
        except OSError:
            return []
        mine = [r for r in rows if len(r.split()) > 6
                and r.split()[0] == str(key) and r.split()[1] == str(shmid)]
        if not mine or mine[0].split()[6] == "0" or time.monotonic() >= deadline:
            return mine
        time.sleep(0.05)


def _dsm_control_handle(libc: ctypes.CDLL, shmid: int) -> int:
    """The handle of the DSM control segment a server's main segment records (0: none). The
    header (PGShmemHeader, the same since PostgreSQL 9.4): int32 magic, pid_t creatorPID, Size
    totalsize, Size freeoffset, dsm_handle dsm_control."""
    libc.shmat.restype = ctypes.c_void_p
    libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    libc.shmdt.argtypes = [ctypes.c_void_p]
    address = libc.shmat(shmid, None, _SHM_RDONLY)
    if address in (None, ctypes.c_void_p(-1).value):
        return 0
    try:
        header = ctypes.string_at(address, 28)
    finally:
        libc.shmdt(address)
    magic, control = struct.unpack_from("<i", header, 0)[0], struct.unpack_from("<I", header, 24)[0]
    return control if magic == _PG_SHMEM_MAGIC else 0


def remove_dsm_segments(control: int) -> None:
    """Remove the DSM control segment ``control`` from /dev/shm and every segment it lists (what
    PostgreSQL's own ``dsm_cleanup_using_control_segment`` does when a server starts over the
    remains of a killed one). Items are (handle, refcnt, ...); their size is derived from the
    segment's size, so the layout of any PostgreSQL version is read right."""
    path = _DSM_DIR / f"PostgreSQL.{control}"
    try:
        data = path.read_bytes()
    except OSError:
        return
    if len(data) >= 16:
        magic, _nitems, maxitems = struct.unpack_from("<III", data, 0)
        stride = (len(data) - 16) // maxitems if maxitems else 0
        if magic == _DSM_CONTROL_MAGIC and stride >= 8:
            for i in range(maxitems):
                handle, refcnt = struct.unpack_from("<II", data, 16 + i * stride)
                if handle and refcnt:
                    (_DSM_DIR / f"PostgreSQL.{handle}").unlink(missing_ok=True)
    path.unlink(missing_ok=True)
