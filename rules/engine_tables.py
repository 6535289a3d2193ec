"""rule-engine's parser tables, kept from one process to the next.

rule-engine builds its parser's LALR tables each time it is imported (ply's ``yacc`` with table
writing off): ~0.3 s of every command that reads rules, measured. ply takes ready tables instead
when the module ``rule_engine.parser.parsetab`` can be imported and was made from the same
grammar: it compares the grammar's signature, and builds the tables as before when they differ.

``provide()`` (called by ``rules/__init__.py``, before rule-engine is imported) hands ply that
module, made from data kept in the user's cache (``~/.cache/knobflow/rule-engine-<version>-
tables.json``: JSON, never code). ``keep()`` (after rule-engine is imported) writes that file
when it is missing: ply's own table module is written into a temporary folder, imported once and
its data kept. A missing, unreadable or stale file costs only the build it would have saved.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
import tempfile
import types
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from targets.common.files import user_cache_dir, write_text_atomic

__all__ = ["keep", "provide"]

MODULE = "rule_engine.parser.parsetab"
#: The table module's names that ply reads (``LRTable.read_table``).
_FIELDS = ("_tabversion", "_lr_method", "_lr_signature", "_lr_action", "_lr_goto",
           "_lr_productions")


def _path() -> Path | None:
    try:
        return user_cache_dir() / f"rule-engine-{version('rule-engine')}-tables.json"
    except PackageNotFoundError:
        return None


#: What ``provide`` did: None (nothing: rule-engine was imported already), "offered" or
#: "missing" (no usable file).
_provided: str | None = None


def provide() -> None:
    """Give ply the kept tables as ``rule_engine.parser.parsetab`` (when rule-engine is not
    imported yet and the tables were kept)."""
    global _provided
    path = _path()
    if "rule_engine" in sys.modules or MODULE in sys.modules or path is None:
        return
    _provided = "missing"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        module = types.ModuleType(MODULE)
        module._tabversion = str(data["_tabversion"])  # type: ignore[attr-defined]
        module._lr_method = str(data["_lr_method"])  # type: ignore[attr-defined]
        module._lr_signature = str(data["_lr_signature"])  # type: ignore[attr-defined]
        module._lr_action = _int_keys(data["_lr_action"])  # type: ignore[attr-defined]
        module._lr_goto = _int_keys(data["_lr_goto"])  # type: ignore[attr-defined]
        module._lr_productions = [tuple(p) for p in data["_lr_productions"]]  # type: ignore[attr-defined]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return  # none kept yet, or not readable: ply builds the tables
    sys.modules[MODULE] = module
    _provided = "offered"


def _int_keys(table: dict[str, dict[str, int]]) -> dict[int, dict[str, int]]:
    """JSON's object keys are strings; ply's state numbers are ints."""
    return {int(state): dict(row) for state, row in table.items()}


def keep() -> None:
    """Keep rule-engine's tables in the cache when ``provide`` had none to give, or gave tables
    that ply did not take (another grammar): once per version of rule-engine."""
    import rule_engine

    path = _path()
    if path is None or _provided is None:
        return
    offered = sys.modules.get(MODULE)
    if _provided == "offered" and offered is not None and \
            rule_engine.Rule.parser._parser.action is getattr(offered, "_lr_action", None):
        return  # the parser was built from them
    with contextlib.suppress(OSError, ImportError, AttributeError, TypeError, ValueError):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(_tables()))


def _tables() -> dict[str, Any]:
    """ply's table data for rule-engine's grammar: its table module, written by ply into a
    temporary folder and imported from there."""
    import rule_engine
    from rule_engine._vendor.ply import yacc

    with tempfile.TemporaryDirectory() as folder:
        yacc.yacc(module=rule_engine.Rule.parser, debug=False, write_tables=True,
                  outputdir=folder, tabmodule="knobflow_parsetab", errorlog=yacc.NullLogger())
        spec = importlib.util.spec_from_file_location("knobflow_parsetab",
                                                      Path(folder) / "knobflow_parsetab.py")
        assert spec is not None and spec.loader is not None
        written = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(written)
    return {field: getattr(written, field) for field in _FIELDS}
