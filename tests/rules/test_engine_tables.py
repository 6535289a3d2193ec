"""rule-engine's parser tables kept between processes (``rules/engine_tables.py``): the first
process keeps them, the next one's parser is built from them and parses the same, and a damaged
or stale file only costs the build it would have saved."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

#: In a fresh process: import the rules, parse one, and say whether ply took the kept tables.
CHILD = """
import json, sys
import rules.language
import rule_engine
from rules.engine_tables import MODULE

kept = sys.modules.get(MODULE)
parser = rule_engine.Rule.parser._parser
rule = rule_engine.Rule("threads * 2 > cache_mb and not (mode == 'a' or threads < 3)")
print(json.dumps({"from_kept": kept is not None and parser.action is getattr(kept, "_lr_action", 0),
                  "matches": [rule.matches({"threads": t, "cache_mb": 10, "mode": "b"})
                              for t in (2, 4, 6, 8)]}))
"""


def _run(cache: Path) -> dict[str, object]:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2], timeout=120, check=True)
    return dict(json.loads(done.stdout))


def _kept(cache: Path) -> list[Path]:
    return sorted((cache / "knobflow").glob("rule-engine-*-tables.json"))


def test_the_tables_are_kept_by_the_first_process_and_used_by_the_next(tmp_path: Path) -> None:
    first = _run(tmp_path)
    assert first["from_kept"] is False  # nothing kept yet: built by ply
    assert len(_kept(tmp_path)) == 1
    second = _run(tmp_path)
    assert second["from_kept"] is True
    assert second["matches"] == first["matches"] == [False, False, True, True]


def test_a_damaged_or_stale_file_is_built_over(tmp_path: Path) -> None:
    _run(tmp_path)
    (path,) = _kept(tmp_path)
    good = json.loads(path.read_text())
    path.write_text("{ not json")
    damaged = _run(tmp_path)
    assert damaged == {"from_kept": False, "matches": [False, False, True, True]}
    assert json.loads(path.read_text()) == good  # kept again
    path.write_text(json.dumps({**good, "_lr_signature": "another grammar"}))
    stale = _run(tmp_path)  # ply compares the signature and builds the tables itself
    assert stale == {"from_kept": False, "matches": [False, False, True, True]}
    assert json.loads(path.read_text()) == good
    assert _run(tmp_path)["from_kept"] is True
