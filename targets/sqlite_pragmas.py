"""SQLite's PRAGMA knobs as SQLite reads and reports them: the order they are applied in, a value
as it goes on the right of ``PRAGMA name = ...``, and what SQLite applied, read back. Imports the
standard library only: it runs in every trial."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Mapping
from typing import Any

from targets.base import ConfigRefused

#: Order in which PRAGMAs are applied: page_size before anything writes the file, locking_mode
#: before journal_mode (exclusive mode on entering WAL keeps the WAL index in heap memory).
PRAGMA_ORDER = (
    "page_size",
    "locking_mode",
    "journal_mode",
    "synchronous",
    "cache_size",
    "cache_spill",
    "mmap_size",
    "temp_store",
    "wal_autocheckpoint",
)
_SYNCHRONOUS = {0: "off", 1: "normal", 2: "full", 3: "extra"}
_TEMP_STORE = {0: "default", 1: "file", 2: "memory"}
_WORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_INTEGER = re.compile(r"^[+-]?[0-9]+$")


def pragma_value(value: Any) -> str:
    """A value as SQLite reads it on the right of ``PRAGMA name = ...``.

    Numbers and identifiers stay bare (``wal``, ``-2000``); booleans become true/false (the
    word form leaves cache_spill's threshold alone); any other text is quoted, so an odd value
    reaches SQLite as the value it is and SQLite decides what to make of it.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    text = str(value).strip()
    if _WORD.match(text) or _INTEGER.match(text):
        return text
    return "'" + text.replace("'", "''") + "'"


def read_back(conn: sqlite3.Connection) -> dict[str, Any]:
    """What SQLite applied, for each knob: names for enums, ints for sizes, bool for cache_spill."""
    raw = {name: conn.execute(f"PRAGMA {name}").fetchone()[0] for name in PRAGMA_ORDER}
    return {
        "page_size": int(raw["page_size"]),
        "locking_mode": str(raw["locking_mode"]).lower(),
        "journal_mode": str(raw["journal_mode"]).lower(),
        "synchronous": _SYNCHRONOUS.get(int(raw["synchronous"]), str(raw["synchronous"])),
        "cache_size": int(raw["cache_size"]),
        # 0 when spilling is off, else the spill threshold in pages
        "cache_spill": int(raw["cache_spill"]) != 0,
        "mmap_size": int(raw["mmap_size"]),
        "temp_store": _TEMP_STORE.get(int(raw["temp_store"]), str(raw["temp_store"])),
        "wal_autocheckpoint": int(raw["wal_autocheckpoint"]),
    }


def ordered(config: Mapping[str, Any]) -> list[str]:
    """The config's knobs in the order they are applied; a knob SQLite has not is refused."""
    unknown = [k for k in config if k not in PRAGMA_ORDER]
    if unknown:
        raise ConfigRefused(
            f"the sqlite target has no knob {', '.join(map(repr, unknown))}; "
            f"knobs are {', '.join(PRAGMA_ORDER)}"
        )
    return [k for k in PRAGMA_ORDER if k in config]
