"""The actuation log: every acknowledged line survives a SIGKILL, a torn last line is skipped and
reported (and cut off by the next append), a bad line elsewhere is an error naming the line, and
the history says how each actuation ended."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from targets.common.errors import KnobflowError
from tasks.actlog import ActuationLog, Outcome, Phase, history_table

REPO = Path(__file__).resolve().parents[2]


def test_append_and_read_back(tmp_path: Path) -> None:
    log = ActuationLog.of(tmp_path / "r")
    aid = log.new_id()
    log.append(aid, Phase.BEGIN, source="recommend", changes={"appendonly": True},
               before_config={"appendonly": False}, path=tmp_path)
    log.append(aid, "applied", applied={"appendonly": True})
    assert stat.S_IMODE(log.path.stat().st_mode) == 0o600
    first, second = log.entries()
    assert (first["id"], first["phase"], first["pid"]) == (aid, "begin", os.getpid())
    assert first["path"] == str(tmp_path) and first["time"].endswith("+00:00")
    assert second["applied"] == {"appendonly": True}
    with pytest.raises(ValueError, match="may not be named pid"):
        log.append(aid, Phase.DONE, pid=3)
    with pytest.raises(ValueError, match="'finished' is not a valid Phase"):
        log.append(aid, "finished")


def test_ids_are_unique_and_sort_by_time() -> None:
    ids = [ActuationLog.new_id() for _ in range(500)]
    assert len(set(ids)) == 500
    later = []
    for _ in range(3):
        time.sleep(0.002)
        later.append(ActuationLog.new_id())
    assert sorted(later) == later and max(ids) < later[0]


def _actuation(log: ActuationLog, *phases: tuple[Phase, dict]) -> str:
    aid = log.new_id()
    for phase, fields in phases:
        log.append(aid, phase, **fields)
    time.sleep(0.002)
    return aid


def test_actuations_grouped_and_the_unfinished_one(tmp_path: Path) -> None:
    log = ActuationLog(tmp_path / "actuations.jsonl")
    assert log.actuations() == [] and log.unfinished() is None
    kept = _actuation(log, (Phase.BEGIN, {"changes": {"a": 1}}), (Phase.APPLIED, {}),
                      (Phase.DONE, {"outcome": Outcome.KEPT}))
    assert log.unfinished() is None
    open_one = _actuation(log, (Phase.BEGIN, {"changes": {"a": 2}}),
                          (Phase.APPLYING, {"changes": {"a": 3}}))
    first, second = log.actuations()
    assert (first.id, first.finished, first.outcome, first.phase) == (
        kept, True, Outcome.KEPT, Phase.DONE)
    assert first.phases == [Phase.BEGIN, Phase.APPLIED, Phase.DONE]
    assert second.fields == {"changes": {"a": 3}}  # a later phase's field wins
    assert log.unfinished() is not None and log.unfinished().id == open_one
    log.append(open_one, Phase.RECOVERED, action="rolled_back", crashed_pid=12)
    log.append(open_one, Phase.DONE, outcome=Outcome.ROLLED_BACK)
    assert log.unfinished() is None


def test_a_torn_last_line_is_skipped_then_cut_by_the_next_append(tmp_path: Path) -> None:
    log = ActuationLog(tmp_path / "actuations.jsonl")
    aid = _actuation(log, (Phase.BEGIN, {"changes": {"a": 1}}))
    with log.path.open("ab") as fh:
        fh.write(b'{"id": "x", "phase": "appl')  # killed in the middle of a write
    assert [e["phase"] for e in log.entries()] == ["begin"]
    assert log.problems == [f"{tmp_path}/actuations.jsonl: line 2 was torn by a crash while it "
                            "was written (26 bytes); skipped"]
    log.append(aid, Phase.DONE, outcome="failed", note="crashed")
    assert [e["phase"] for e in log.entries()] == ["begin", "done"]
    assert log.problems == []
    assert log.path.read_bytes().count(b"\n") == 2


@pytest.mark.parametrize(("line", "message"), [
    (b"not json", "line 2 is not a JSON record"),
    (b"[1, 2]", "line 2 is not a JSON object"),
    (b'{"id": "a", "time": "t"}', "line 2: field 'phase' is missing"),
    (b'{"id": "a", "phase": "exploded", "time": "t"}',
     "line 2: field 'phase' is 'exploded', not one of begin, observed_before"),
    (b'{"id": "a", "phase": "done", "time": "t", "outcome": "meh"}',
     "line 2: field 'outcome' is 'meh', not one of kept, rolled_back"),
])
def test_a_bad_line_inside_the_log_is_an_error_naming_it(tmp_path: Path, line: bytes,
                                                         message: str) -> None:
    log = ActuationLog(tmp_path / "actuations.jsonl")
    aid = _actuation(log, (Phase.BEGIN, {}))
    with log.path.open("ab") as fh:
        fh.write(line + b"\n")
    log.append(aid, Phase.DONE, outcome="kept")
    with pytest.raises(KnobflowError) as caught:
        log.entries()
    assert str(caught.value).startswith(f"{tmp_path}/actuations.jsonl: {message}")
    assert str(caught.value).endswith("the log is append-only: move the file aside to start a "
                                      "new one")


WRITER = textwrap.dedent("""
    import sys
    from tasks.actlog import ActuationLog
    log = ActuationLog(sys.argv[1])
    for i in range(1_000_000):
        log.append("a", "applying", n=i, pad="x" * (i % 5000))
        print(i, flush=True)
""")


def test_every_acknowledged_append_survives_sigkill(tmp_path: Path) -> None:
    """Five writers killed at different moments, one after the other on the same log: every
    line whose append returned is there, parseable, and the log stays readable."""
    path = tmp_path / "actuations.jsonl"
    acknowledged: list[tuple[int, int]] = []  # (writer, n)
    for writer in range(5):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], text=True,
                                stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert proc.stdout is not None
        for _ in range(20 + 37 * writer):
            acknowledged.append((proc.pid, int(proc.stdout.readline())))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    log = ActuationLog(path)
    found = {(e["pid"], e["n"]) for e in log.entries()}
    assert set(acknowledged) <= found
    assert all(p.endswith("skipped") for p in log.problems) and len(log.problems) <= 1
    raw = [json.loads(x) for x in path.read_bytes().splitlines() if x.endswith(b"}")]
    assert len(raw) >= len(acknowledged)


def test_history_says_how_each_actuation_ended(tmp_path: Path) -> None:
    log = ActuationLog(tmp_path / "actuations.jsonl")
    test = {"ratio": 0.71, "p_value": 0.0004}
    _actuation(log, (Phase.BEGIN, {"source": "recommend", "changes": {"b": 1, "a": 2}}),
               (Phase.DECIDED, {"keep": True, "reasons": ["no significant change"],
                                "test": {"ratio": 1.01, "p_value": 0.4}}),
               (Phase.DONE, {"outcome": "kept"}))
    _actuation(log, (Phase.BEGIN, {"source": "best.yaml", "changes": {"appendfsync": "always"}}),
               (Phase.DECIDED, {"keep": False, "reasons": ["throughput fell"], "test": test}),
               (Phase.ROLLED_BACK, {"restored": {"appendfsync": "everysec"}}),
               (Phase.LEARNED, {"rule": "learned-3"}), (Phase.DONE, {"outcome": "rolled_back"}))
    _actuation(log, (Phase.BEGIN, {"source": "canary", "changes": {"a": 5}}),
               (Phase.APPLIED, {}), (Phase.RECOVERED, {"action": "rolled_back",
                                                       "crashed_pid": 4242}),
               (Phase.DONE, {"outcome": "rolled_back"}))
    _actuation(log, (Phase.BEGIN, {"source": "recommend", "changes": {"a": 1}}),
               (Phase.DONE, {"outcome": "dry_run"}))
    _actuation(log, (Phase.BEGIN, {"source": "x", "changes": {"a": 1, "b": 2, "c": 3, "d": 4}}),
               (Phase.DONE, {"outcome": "refused", "note": "4 knobs, the policy allows 3"}))
    _actuation(log, (Phase.BEGIN, {"source": "recommend", "changes": {"a": 1}}),
               (Phase.APPLYING, {}))
    rows = history_table(log)
    assert [r["ended"] for r in rows] == [
        "kept after verification",
        "rolled back after verification; learned learned-3",
        "rolled back by recovery after a crash (pid 4242)",
        "dry run: nothing applied",
        "refused: 4 knobs, the policy allows 3",
        f"unfinished: stopped after applying (pid {os.getpid()})",
    ]
    assert rows[0]["knobs"] == "2: a, b" and rows[0]["decision"] == "keep: no significant change"
    assert (rows[1]["decision"], rows[1]["ratio"], rows[1]["p_value"], rows[1]["outcome"]) == (
        "roll back: throughput fell", 0.71, 0.0004, "rolled_back")
    assert rows[5]["outcome"] == "unfinished" and rows[5]["ratio"] is None
    assert list(rows[0]) == ["id", "started", "source", "knobs", "decision", "ratio", "p_value",
                             "outcome", "ended"]
