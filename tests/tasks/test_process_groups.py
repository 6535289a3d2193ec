"""A killed trial's process group is waited for until no member runs: members outlive the
leader's reaping by a moment, and a zombie member has ended."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tasks.process_groups import wait_group_gone


def _group(code: str) -> subprocess.Popen[bytes]:
    """A process leading a group of its own, running ``code``."""
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True)


def test_a_member_that_outlives_the_leader_is_waited_for() -> None:
    # the leader starts a member of its group that ends 1 s later, and exits at once
    leader = _group("import subprocess, sys; subprocess.Popen(['sleep', '1'])")
    leader.wait()
    began = time.monotonic()
    assert wait_group_gone(leader.pid, timeout=10)
    assert 0.5 < time.monotonic() - began < 5
    assert wait_group_gone(leader.pid, timeout=0)  # gone: answered at once


def test_it_gives_up_after_its_timeout_while_a_member_runs() -> None:
    leader = _group("import subprocess, sys; subprocess.Popen(['sleep', '30'])")
    leader.wait()
    try:
        began = time.monotonic()
        assert not wait_group_gone(leader.pid, timeout=0.3)
        assert time.monotonic() - began < 2
    finally:
        os.killpg(leader.pid, signal.SIGKILL)
    assert wait_group_gone(leader.pid, timeout=10)


def test_a_zombie_member_counts_as_ended() -> None:
    # the leader's child exits at once and the leader never reaps it: once the leader is
    # killed, the zombie is left to init, in the group until init reaps it (one that never does
    # leaves it there, and signals still reach it: os.killpg(pgid, 0) succeeds)
    leader = _group("import os, time\nif os.fork() == 0: os._exit(0)\ntime.sleep(30)")
    try:
        time.sleep(0.5)
        assert not wait_group_gone(leader.pid, timeout=0.2)  # the leader runs
    finally:
        os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()
    assert wait_group_gone(leader.pid, timeout=10)
