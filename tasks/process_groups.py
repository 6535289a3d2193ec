"""Process groups of trials: waiting until a killed trial's group is gone.

A trial process leads a process group of its own (its servers and clients in it); one
``killpg`` ends them all, but the leader is reaped before every member has ended.
"""

from __future__ import annotations

import os
import time

__all__ = ["GROUP_GONE_S", "group_runs", "wait_group_gone"]

#: Seconds a killed trial's group gets to be gone once its leader is reaped.
GROUP_GONE_S = 5.0


def wait_group_gone(pgid: int, timeout: float = GROUP_GONE_S) -> bool:
    """Wait until no process of group ``pgid`` runs (zombies are ended), at most ``timeout``
    seconds; whether it is gone. The leader of a killed group is reaped before its members have
    all ended: a loaded machine still showed a trial's redis-benchmark after the trial had
    returned (the contract's hang check, CI). Costs nothing when the group is gone already."""
    deadline = time.monotonic() + timeout
    while group_runs(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def group_runs(pgid: int) -> bool:
    """Whether any process of group ``pgid`` runs (a zombie has ended: one left to an init
    that does not reap still takes signals, so a signal alone cannot tell)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member of another user (a server run as its own user)
        pass
    return _live_member(pgid)


def _live_member(pgid: int) -> bool:
    """Whether a process of group ``pgid`` runs, from ``/proc`` (state, then process group)."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as stat:
                    state, _, group = stat.read().rsplit(b")", 1)[1].split()[:3]
            except (OSError, ValueError):
                continue
            if int(group) == pgid and state not in (b"Z", b"X"):
                return True
    return False
